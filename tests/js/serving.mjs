// A client in another language (tests/test_js_client.py runs it): finds the eventstore query
// service with $SRV.PING, asks one aggregate's state, then prints the first change of the feed.
// Usage: node serving.mjs URL STREAM TYPE ID. One JSON object per line on stdout.
import { connect, JSONCodec, createInbox } from "nats";

const [url, stream, type, id] = process.argv.slice(2);
const jc = JSONCodec();
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const nc = await connect({ servers: url });

// Discovery: every service instance answers $SRV.PING; keep ours (same stream).
const inbox = createInbox();
const pings = nc.subscribe(inbox);
nc.publish("$SRV.PING.eventstore", new Uint8Array(), { reply: inbox });
const found = [];
const timer = setTimeout(() => pings.unsubscribe(), 1000);
for await (const m of pings) {
  const ping = jc.decode(m.data);
  if (ping.metadata && ping.metadata.stream === stream) found.push(ping);
}
clearTimeout(timer);
say({ ping: found });

// One request: the state now.
const reply = await nc.request(
  `_ES.Q.${stream}.entities.state`,
  jc.encode({ aggregate_type: type, aggregate_id: id }),
  { timeout: 5000 },
);
say({ state: jc.decode(reply.data), error: reply.headers?.get("Nats-Service-Error-Code") || null });

// The change feed: a plain subscription; the test appends once it reads "subscribed".
const feed = nc.subscribe(`_ES.CHANGES.${stream}.entities.${type}.*`, { max: 1 });
await nc.flush();
say({ subscribed: true });
for await (const m of feed) {
  say({ subject: m.subject, change: jc.decode(m.data) });
}
await nc.close();
