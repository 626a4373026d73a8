// The official JavaScript client (npm `replicate@1.4.0`) against mediagen's `/v1`, one step per
// run: `node run.mjs <step> <config.json>`, printing the step's findings as JSON on stdout for
// tests/replicate_api/test_js_client.py to check. REPLICATE_JS is the installed package's folder;
// NODE_EXTRA_CA_CERTS makes Node trust the test's HTTPS certificate.
import { readFile, writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(import.meta.url);
const Replicate = require(process.env.REPLICATE_JS);
const { validateWebhook } = Replicate;

const [step, configPath] = process.argv.slice(2);
const config = JSON.parse(await readFile(configPath, "utf8"));
const client = (auth = config.auth, baseUrl = config.base) => new Replicate({ auth, baseUrl });
const SMALL = { width: 64, height: 64 };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const list = (output) => (Array.isArray(output) ? output : [output]);

async function written(output, prefix) {
  const written = [];
  for (const [index, item] of list(output).entries()) {
    const path = join(config.out, `${prefix}-${index}`);
    await writeFile(path, Buffer.from(await (await item.blob()).arrayBuffer()));
    written.push({ path, url: item.url().href, fileOutput: item instanceof ReadableStream });
  }
  return written;
}

const steps = {
  // replicate.run: a FileOutput per image, whose bytes the test compares with the stored ones.
  async run() {
    const replicate = client();
    const seen = [];
    const output = await replicate.run(
      "mediagen/builtin",
      { input: { prompt: "a fox in javascript", ...SMALL, seed: 11, num_outputs: 2 } },
      (prediction) => seen.push(prediction.id),
    );
    return { id: seen[0], files: await written(output, "run") };
  },

  // A version id from models.get, then run pinned to it (POST /v1/predictions).
  async version() {
    const replicate = client();
    const model = await replicate.models.get("mediagen", "builtin");
    const version = await replicate.models.versions.get("mediagen", "builtin", model.latest_version.id);
    const output = await replicate.run(`mediagen/builtin:${version.id}`, {
      input: { prompt: "pinned in javascript", ...SMALL },
    });
    return {
      version: version.id,
      inputs: Object.keys(version.openapi_schema.components.schemas.Input.properties),
      files: await written(output, "version"),
    };
  },

  // predictions.create, then wait, then get.
  async create() {
    const replicate = client();
    const input = { prompt: "a lemur in javascript", ...SMALL };
    const created = await replicate.predictions.create({ model: "mediagen/builtin", input });
    const waited = await replicate.wait(created, { interval: 200 });
    const got = await replicate.predictions.get(created.id);
    return { created, waited, got };
  },

  // As many predictions as fill more than one page, then every page through paginate.
  async paginate() {
    const replicate = client(config.listerAuth);
    const created = [];
    for (;;) {
      for (let i = 0; i < 10; i += 1) {
        const made = await replicate.predictions.create({
          model: "mediagen/builtin",
          input: { prompt: `item ${created.length}`, ...SMALL },
        });
        created.push(made.id);
      }
      const first = await replicate.predictions.list();
      if (first.next) break;
      if (created.length >= 150) throw new Error("no second page after 150 predictions");
    }
    const pages = [];
    for await (const page of replicate.paginate(replicate.predictions.list)) {
      pages.push(page.map((prediction) => prediction.id));
    }
    return { created, pages };
  },

  // A prediction of the slow stack, canceled while it runs.
  async cancel() {
    const replicate = client(config.auth, config.slow);
    const created = await replicate.predictions.create({
      model: "mediagen/builtin",
      input: { prompt: "never mind, javascript", ...SMALL },
    });
    let current = created;
    const deadline = Date.now() + 10_000;
    while (current.status !== "processing" && Date.now() < deadline) {
      await sleep(100);
      current = await replicate.predictions.get(created.id);
    }
    const canceled = await replicate.predictions.cancel(created.id);
    const after = await replicate.predictions.get(created.id);
    return { before: current.status, canceled, after };
  },

  // Webhooks to a receiver of this script's own, checked with validateWebhook.
  async webhook() {
    const replicate = client();
    const hits = [];
    const server = createServer((request, response) => {
      const chunks = [];
      request.on("data", (chunk) => chunks.push(chunk));
      request.on("end", () => {
        hits.push({ headers: request.headers, body: Buffer.concat(chunks).toString("utf8") });
        response.writeHead(204).end();
      });
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${server.address().port}/hook`;
    try {
      const { key } = await replicate.webhooks.default.secret.get();
      const created = await replicate.predictions.create({
        model: "mediagen/builtin",
        input: { prompt: "a pigeon in javascript", ...SMALL },
        webhook: url,
        webhook_events_filter: ["start", "completed"],
      });
      const deadline = Date.now() + 20_000;
      const done = () => hits.some((hit) => JSON.parse(hit.body).status === "succeeded");
      while (!done() && Date.now() < deadline) await sleep(100);
      await sleep(1000); // anything else that was coming
      const checks = [];
      for (const hit of hits) {
        const headers = Object.fromEntries(
          Object.entries(hit.headers).filter(([name]) => name.startsWith("webhook-")),
        );
        const request = new Request(url, { method: "POST", headers, body: hit.body });
        checks.push({
          status: JSON.parse(hit.body).status,
          id: JSON.parse(hit.body).id,
          valid: await validateWebhook(request, key),
          tampered: await validateWebhook(
            { id: hit.headers["webhook-id"], timestamp: hit.headers["webhook-timestamp"],
              signature: hit.headers["webhook-signature"], body: `${hit.body} `, secret: key },
          ),
          otherSecret: await validateWebhook(
            { id: hit.headers["webhook-id"], timestamp: hit.headers["webhook-timestamp"],
              signature: hit.headers["webhook-signature"], body: hit.body,
              secret: config.otherWebhookSecret },
          ),
        });
      }
      return { key, prediction: created.id, checks };
    } finally {
      server.close();
    }
  },

  // replicate.stream: logs, each output (a URL: the client makes file objects only of its own
  // file URLs), then done. The stream URL is opened without the token: it is signed.
  async stream() {
    const replicate = client();
    const events = [];
    for await (const event of replicate.stream("mediagen/builtin", {
      input: { prompt: "a stream in javascript", ...SMALL, num_outputs: 2 },
    })) {
      events.push({ event: event.event, data: String(event.data) });
    }
    const files = [];
    for (const [index, event] of events.filter((e) => e.event === "output").entries()) {
      const path = join(config.out, `stream-${index}`);
      const response = await fetch(event.data);
      await writeFile(path, Buffer.from(await response.arrayBuffer()));
      files.push(path);
    }
    const newest = (await replicate.predictions.list()).results[0];
    return { events, files, id: newest.id, prompt: newest.input.prompt };
  },

  // A Cog model that streams text (tests/providers/test_cog_outputs.py, its own config): run
  // gives the list of its chunks; stream sends each as an output event.
  async textStream() {
    const replicate = client(config.auth, config.base);
    const input = { prompt: "in javascript", text: config.text, delay: 0.2 };
    const output = await replicate.run(config.model, { input });
    const events = [];
    for await (const event of replicate.stream(config.model, { input })) {
      events.push({ event: event.event, data: String(event.data) });
    }
    return { output, events };
  },

  // Reads past the limit: the client retries the 429 (at once, in 1.4.0), then gives up with
  // an ApiError whose response carries Retry-After; after that wait a read succeeds again.
  async limited() {
    let statuses = [];
    const recording = async (url, init) => {
      const response = await fetch(url, init);
      statuses.push(response.status);
      return response;
    };
    const replicate = new Replicate({
      auth: config.limitedAuth, baseUrl: config.limited, fetch: recording,
    });
    const created = await replicate.predictions.create({
      model: "mediagen/builtin",
      input: { prompt: "patience in javascript", ...SMALL },
    });
    const calls = [];
    let refused;
    while (!refused && calls.length < 20) {
      statuses = [];
      try {
        await replicate.predictions.get(created.id);
      } catch (error) {
        refused = error;
      }
      calls.push(statuses);
    }
    if (!refused) throw new Error("no read was refused");
    const retryAfter = Number(refused.response.headers.get("retry-after"));
    const contentType = refused.response.headers.get("content-type");
    await sleep(retryAfter * 1000 + 500);
    statuses = [];
    const again = await replicate.predictions.get(created.id);
    return {
      calls, status: refused.response.status, retryAfter, contentType,
      again: { id: again.id, statuses },
      created: created.id,
    };
  },

  // files.create (a Blob, as a browser or Node gives one), get, list, delete, get again.
  async files() {
    const replicate = client(config.filerAuth);
    const bytes = await readFile(config.image);
    const made = await replicate.files.create(new Blob([bytes], { type: "image/png" }), {
      purpose: "test",
    });
    const got = await replicate.files.get(made.id);
    const listed = (await replicate.files.list()).results.map((file) => file.id);
    const deleted = await replicate.files.delete(made.id);
    let afterStatus = 200;
    try {
      await replicate.files.get(made.id);
    } catch (error) {
      afterStatus = error.response ? error.response.status : String(error);
    }
    return { made, got, listed, deleted, afterStatus, size: bytes.length };
  },

  // run with a Buffer input under the default file encoding strategy: it uploads the file
  // (POST /files) and sends the returned urls.get, which the prediction uses.
  async runWithFile() {
    const calls = [];
    const recording = async (url, init) => {
      const body = typeof init?.body === "string" ? JSON.parse(init.body) : null;
      calls.push({ method: init?.method ?? "GET", path: new URL(url).pathname, body });
      return fetch(url, init);
    };
    const replicate = new Replicate({ auth: config.filerAuth, baseUrl: config.base, fetch: recording });
    const seen = [];
    const output = await replicate.run(
      "mediagen/builtin",
      { input: { prompt: "over red in javascript", image: await readFile(config.image),
                 width: 128, height: 128, prompt_strength: 0.2 } },
      (prediction) => seen.push(prediction),
    );
    const files = await replicate.files.list();
    return {
      calls,
      input: seen[0].input,
      uploaded: files.results.map((file) => file.urls.get),
      output: await written(output, "with-file"),
    };
  },

  // Errors arrive as ApiError with the answer's status.
  async errors() {
    const mine = await client().predictions.create({
      model: "mediagen/builtin",
      input: { prompt: "not yours", ...SMALL },
    });
    const statusOf = async (call) => {
      try {
        await call();
        return 200;
      } catch (error) {
        return error.response ? error.response.status : String(error);
      }
    };
    return {
      otherTenant: await statusOf(() => client(config.otherAuth).predictions.get(mine.id)),
      otherCancel: await statusOf(() => client(config.otherAuth).predictions.cancel(mine.id)),
      wrongKey: await statusOf(() => client("mg_wrong").predictions.list()),
      unknownModel: await statusOf(() => client().run("nobody/nothing", { input: {} })),
    };
  },
};

if (!steps[step]) {
  console.error(`unknown step ${step}; steps: ${Object.keys(steps).join(", ")}`);
  process.exit(2);
}
process.stdout.write(JSON.stringify(await steps[step]()));
