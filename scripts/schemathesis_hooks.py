"""schemathesis hooks for scripts/schemathesis: validate NDJSON log streams; send archives.

The logs endpoint answers `application/x-ndjson`, one `LogFrame` per line, which schemathesis
cannot read by itself. This deserializer checks every line against the document's `LogFrame`
schema and hands the last one to schemathesis' own response-schema check.
"""

import json

import jsonschema_rs
import schemathesis
from hypothesis import strategies as st

# Image archives and build contexts are tar streams with no schema to generate from: send
# bytes (the runner must refuse what is not an archive, and answer within its contract).
schemathesis.openapi.media_type("application/x-tar", st.binary(max_size=4096))


@schemathesis.deserializer("application/x-ndjson")
def ndjson_log_frames(ctx, response):
    root = ctx.operation.schema.raw_schema
    validator = jsonschema_rs.Draft202012Validator(
        {**root, "$ref": "#/components/schemas/LogFrame"}
    )
    frames = []
    for number, line in enumerate(response.content.splitlines(), start=1):
        if not line.strip():
            continue
        frame = json.loads(line)
        errors = [e.message for e in validator.iter_errors(frame)]
        if errors:
            raise ValueError(f"line {number} is not a LogFrame: {'; '.join(errors)}")
        frames.append(frame)
    if not frames:
        raise ValueError("the log stream is empty; it always ends with an exit frame")
    return frames[-1]


@schemathesis.hook
def before_call(ctx, case, kwargs):
    """Asks for the list where a request would open a watch of runs (`watch=true` alone).

    A watch streams until its token expires, an hour here, so schemathesis would wait for it
    until its request timeout. The watch has tests of its own (runner/tests/watch.rs); a
    `watch` beside another parameter is refused at once and stays in.
    """
    query = case.query
    if (
        case.method.upper() == "GET"
        and case.path == "/api/v1/containers/runs"
        and query
        and str(query.get("watch")).lower() == "true"
        and len(query) == 1
    ):
        del query["watch"]
