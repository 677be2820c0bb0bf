// The official AG-UI TypeScript client (@ag-ui/client, pinned in package.json)
// driving purpose_bus.agui, for tests/test_agui_client.py. Every scenario runs
// the client's own pipeline (verifyEvents, then defaultApplyEvents) and prints
// one JSON object on stdout; any error exits with status 1.
//
//   node agui_client.mjs run URL THREAD_ID RUN_ID
//   node agui_client.mjs resume URL RUN_ID FRAMES      (drop after FRAMES events)
//   node agui_client.mjs viewers URL RUN_ID COUNT
//   node agui_client.mjs abort URL RUN_ID
//   node agui_client.mjs verify FILE      (a JSON list of event lists)
import { readFile } from "node:fs/promises";
import { AbstractAgent, HttpAgent, verifyEvents } from "@ag-ui/client";
import { from, lastValueFrom, toArray } from "rxjs";

/** GET {url}/runs/{runId}: join or resume a run (after Last-Event-ID). */
class JoinAgent extends HttpAgent {
  constructor(url, runId, lastEventId) {
    super({ url: `${url}/runs/${encodeURIComponent(runId)}` });
    this.lastEventId = lastEventId;
  }

  requestInit() {
    const headers = { Accept: "text/event-stream" };
    if (this.lastEventId !== undefined) headers["Last-Event-ID"] = this.lastEventId;
    return { method: "GET", headers, signal: this.abortController.signal };
  }
}

/** Replays events already received, through the same pipeline. */
class ReplayAgent extends AbstractAgent {
  constructor(events) {
    super({});
    this.events = events;
  }

  run() {
    return from(this.events);
  }
}

/** POST a run and read SSE frames by hand until `limit` events, then drop. */
async function dropAfter(url, runId, limit) {
  const controller = new AbortController();
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify({ threadId: "t-drop", runId, messages: [] }),
    signal: controller.signal,
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const events = [];
  let lastId;
  let buffer = "";
  while (events.length < limit) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const blocks = buffer.split("\n\n");
    buffer = blocks.pop();
    for (const block of blocks) {
      for (const line of block.split("\n")) {
        if (line.startsWith("id: ")) lastId = line.slice(4);
        if (line.startsWith("data: ")) events.push(JSON.parse(line.slice(6)));
      }
      if (events.length >= limit && lastId !== undefined) break;
    }
  }
  controller.abort();
  return { events, lastId };
}

function recorder(into) {
  return { onEvent: ({ event }) => void into.push(event) };
}

async function run(url, threadId, runId) {
  const agent = new HttpAgent({ url, threadId });
  const events = [];
  const { newMessages } = await agent.runAgent({ runId }, recorder(events));
  return { newMessages, types: events.map((e) => e.type) };
}

async function resume(url, runId, frames) {
  const { events, lastId } = await dropAfter(url, runId, Number(frames));
  // What the client had before the drop (the stream stopped mid-run).
  const before = new ReplayAgent(events);
  await before.runAgent({ runId });
  // The resumed stream alone passes verifyEvents (runAgent runs it).
  const resumed = new JoinAgent(url, runId, lastId);
  resumed.setMessages(before.messages);
  const got = [];
  await resumed.runAgent({ runId }, recorder(got));
  await lastValueFrom(verifyEvents(false)(from(got)).pipe(toArray()));
  // An unbroken viewer of the whole run.
  const whole = new JoinAgent(url, runId);
  await whole.runAgent({ runId });
  return {
    lastId,
    dropped: events.length,
    preludeTypes: got.slice(0, 4).map((e) => e.type),
    resumedMessages: resumed.messages,
    unbrokenMessages: whole.messages,
  };
}

async function viewers(url, runId, count) {
  const streams = await Promise.all(
    Array.from({ length: Number(count) }, async () => {
      const got = [];
      await new JoinAgent(url, runId).runAgent({ runId }, recorder(got));
      return got;
    }),
  );
  return { streams };
}

async function abort(url, runId) {
  const agent = new HttpAgent({ url, threadId: "t-abort" });
  let seen = 0;
  const done = agent.runAgent(
    { runId },
    {
      onTextMessageContentEvent: () => {
        seen += 1;
        if (seen === 1) agent.abortRun();
      },
    },
  );
  await done.catch(() => undefined);
  return { seen };
}

/** verifyEvents over each stream in FILE: how many passed, and each error. */
async function verify(file) {
  const streams = JSON.parse(await readFile(file, "utf8"));
  const errors = [];
  for (const [index, stream] of streams.entries()) {
    try {
      await lastValueFrom(verifyEvents(false)(from(stream)).pipe(toArray()));
    } catch (error) {
      errors.push({ index, message: String(error?.message ?? error) });
    }
  }
  return { checked: streams.length, errors };
}

const scenarios = { run, resume, viewers, abort, verify };
const [name, ...args] = process.argv.slice(2);
try {
  const result = await scenarios[name](...args);
  process.stdout.write(JSON.stringify(result) + "\n");
} catch (error) {
  process.stderr.write(`${error?.stack ?? error}\n`);
  process.exit(1);
}
