import { connect, RunRequest } from "@bus/client";

const bus = await connect();
const argv = process.argv.length > 2 ? process.argv.slice(2) : ["sh", "-c", "printf OK"];
const output: Buffer[] = [];
for await (const event of bus.containers.run(RunRequest.fromPartial({ spec: { argv } }))) {
  if (event.output) output.push(event.output.data);
  // No exit code: the run failed to start or was lost (`exited.reason` says).
  if (event.exited) process.exitCode = event.exited.exitCode ?? 125;
}
process.stdout.write(Buffer.concat(output));
bus.close();
