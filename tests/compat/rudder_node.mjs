// RudderStack's Node SDK (@rudderstack/rudder-sdk-node) against a running Kizuna.
// Env: KIZUNA_URL, KIZUNA_WRITE_KEY, KIZUNA_SOURCE_ID, KIZUNA_DATABASE_URL (run.sh sets them).
// Sends one call of each type (gzipped, as the SDK does by default), flushes, then checks the
// rows stored in `events`. Exits 1 on any failed check or upload error.
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import Analytics from '@rudderstack/rudder-sdk-node';

const { KIZUNA_URL, KIZUNA_WRITE_KEY, KIZUNA_SOURCE_ID, KIZUNA_DATABASE_URL } = process.env;
const run = randomUUID().slice(0, 8);
const [user, anon, group, prev] = ['user', 'anon', 'org', 'prev'].map((p) => `js-${p}-${run}`);
const ts = new Date('2024-05-01T12:30:00Z');

const client = new Analytics(KIZUNA_WRITE_KEY, {
  dataPlaneUrl: KIZUNA_URL, flushAt: 100, flushInterval: 60000, retryCount: 1, logLevel: 'error',
});
const errors = [];
// The SDK sends the first message at once without awaiting it: record that failure too.
process.on('unhandledRejection', (err) => errors.push(`upload failed: ${err?.message ?? err}`));
const sent = (what) => (err) => err && errors.push(`${what} upload failed: ${err.message ?? err}`);
client.identify({ userId: user, anonymousId: anon,
  traits: { email: `${user}@example.com`, plan: 'pro', seats: 3 } }, sent('identify'));
client.track({ userId: user, event: 'Order Completed', timestamp: ts,
  properties: { order_id: 'o-1', revenue: 42.5, items: ['a', 'b'] } }, sent('track'));
client.page({ userId: user, category: 'Docs', name: 'Getting Started',
  properties: { path: '/docs/start' } }, sent('page'));
client.screen({ anonymousId: anon, name: 'Welcome', properties: { step: 1 } }, sent('screen'));
client.group({ userId: user, groupId: group, traits: { name: 'Acme', employees: 50 } }, sent('group'));
client.alias({ userId: user, previousId: prev }, sent('alias'));
try {
  await client.flush(); // resolves once every queued batch got its answer; rejects on an error
} catch (err) {
  errors.push(`flush failed: ${err.message ?? err}`);
}
await new Promise((resolve) => setImmediate(resolve)); // let the per-message callbacks run

const sql = `SELECT coalesce(json_agg(to_jsonb(e) || jsonb_build_object('ts_epoch', extract(epoch FROM e.ts))
  ORDER BY seq), '[]') FROM events e WHERE user_id = '${user}' OR anonymous_id = '${anon}'`;
const rows = JSON.parse(execFileSync('psql', [KIZUNA_DATABASE_URL, '-XAtq', '-v', 'ON_ERROR_STOP=1',
  '-c', sql], { encoding: 'utf8' }));
const byType = Object.fromEntries(rows.map((r) => [r.type, r]));

const check = (what, got, want) => {
  if (!isDeepStrictEqual(got, want)) {
    errors.push(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
};
check('row count', rows.length, 6);
check('types', Object.keys(byType).sort(), ['alias', 'group', 'identify', 'page', 'screen', 'track']);
for (const r of rows) {
  check(`${r.type} source_id`, r.source_id, KIZUNA_SOURCE_ID);
  check(`${r.type} context.library.name`, r.context?.library?.name, 'analytics-node');
  if (!r.message_id) errors.push(`${r.type}: empty message_id`);
}
const { identify = {}, track = {}, page = {}, screen = {}, group: grp = {}, alias = {} } = byType;
check('identify user_id', identify.user_id, user);
check('identify anonymous_id', identify.anonymous_id, anon);
check('identify traits', identify.traits,
  { email: `${user}@example.com`, plan: 'pro', seats: 3 });
check('track user_id', track.user_id, user);
check('track event', track.event, 'Order Completed');
check('track properties', track.properties, { order_id: 'o-1', revenue: 42.5, items: ['a', 'b'] });
check('track ts (= timestamp)', track.ts_epoch, ts.getTime() / 1000);
check('page name', page.name, 'Getting Started');
check('page properties.path', page.properties?.path, '/docs/start');
check('screen anonymous_id', screen.anonymous_id, anon);
check('screen user_id', screen.user_id, null);
check('screen name', screen.name, 'Welcome');
check('screen properties.step', screen.properties?.step, 1);
check('group group_id', grp.group_id, group);
check('group traits', grp.traits, { name: 'Acme', employees: 50 });
check('alias user_id', alias.user_id, user);
check('alias previous_id', alias.previous_id, prev);

for (const err of errors) console.error(`rudder_node: FAIL ${err}`);
console.log(`rudder_node: ${errors.length ? 'FAILED' : 'ok'} (${rows.length} rows checked)`);
process.exit(errors.length ? 1 : 0);
