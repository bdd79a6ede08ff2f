/**
 * Follows a run's output the way an IDE panel does: what exists, then what comes, until the
 * run's exit frame; when the connection to busd breaks, it reconnects and resumes after the
 * last seq it saw (`afterSeq`), so nothing is shown twice or lost.
 *
 *   node dist/examples/follow-logs.js RUN_ID
 *
 * Prints the output as it arrives, `[exit N]` at the end, and exits with the run's exit code.
 */
import { status as Code } from "@grpc/grpc-js";
import { BusError, connect, StdStream, StreamLogsRequest, type LogChunk, type RunExited } from "@bus/client";

const RECONNECT = new Set([Code.UNAVAILABLE, Code.CANCELLED, Code.UNKNOWN]);

export async function follow(
  runId: string,
  onOutput: (chunk: LogChunk) => void,
  afterSeq = 0,
  attempts = 20,
): Promise<RunExited> {
  let failures = 0;
  for (;;) {
    let bus;
    try {
      bus = await connect({ timeoutMs: 5000 });
      const request = StreamLogsRequest.fromPartial({ runId, follow: true, afterSeq });
      for await (const event of bus.containers.streamLogs(request)) {
        if (event.output) {
          afterSeq = event.output.seq;
          failures = 0;
          onOutput(event.output);
        } else if (event.gap) {
          afterSeq = event.gap.firstAvailableSeq - 1;
        } else if (event.exited) {
          return event.exited;
        }
      }
      throw new BusError("the log stream ended before the run's exit frame");
    } catch (error) {
      const busError = BusError.from(error);
      // Not answering at connect() counts as UNAVAILABLE: busd may be restarting.
      const code = busError.code === Code.UNKNOWN && !busError.reason ? Code.UNAVAILABLE : busError.code;
      failures += 1;
      if (!RECONNECT.has(code) || failures >= attempts) throw busError;
      process.stderr.write(`[reconnecting after seq ${afterSeq}: ${Code[code]}]\n`);
      await new Promise((resolve) => setTimeout(resolve, Math.min(100 * 2 ** failures, 2000)));
    } finally {
      bus?.close();
    }
  }
}

const runId = process.argv[2];
if (!runId) {
  process.stderr.write("usage: follow-logs.js RUN_ID\n");
  process.exit(2);
}
try {
  const exited = await follow(runId, (chunk) =>
    (chunk.stream === StdStream.STD_STREAM_STDERR ? process.stderr : process.stdout).write(chunk.data),
  );
  if (exited.exitCode === undefined) {
    // The run failed to start or was lost: no exit code, a reason.
    process.stdout.write(`[ended without an exit code: ${exited.reason}]\n`);
    process.exitCode = 125;
  } else {
    process.stdout.write(`[exit ${exited.exitCode}]\n`);
    process.exitCode = exited.exitCode;
  }
} catch (error) {
  process.stderr.write(`follow-logs: ${BusError.from(error).message}\n`);
  process.exitCode = 1;
}
