// The official JavaScript client (npm `replicate`, installed by tests/replicate_api) runs a model
// with no input against mediagen's `/v1`: `node cog_run.mjs <base URL ending in /v1> <model>`
// prints `{"output": ...}`. REPLICATE_JS is the installed package's folder; no token (the stack
// requires none, and REPLICATE_API_TOKEN is empty).
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const Replicate = require(process.env.REPLICATE_JS);

const [baseUrl, model] = process.argv.slice(2);
const replicate = new Replicate({ baseUrl });
const output = await replicate.run(model, { input: {} });
const shown = (item) => (item instanceof ReadableStream ? String(item.url()) : item);
process.stdout.write(JSON.stringify({ output: Array.isArray(output) ? output.map(shown) : shown(output) }));
