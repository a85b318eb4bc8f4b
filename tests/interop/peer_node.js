#!/usr/bin/env node
// Interop peer in Node (@grpc/grpc-js, a pure-JavaScript gRPC stack that shares
// no code with the C core): calls Health/Check and one method of a server, and
// checks the status codes.
//
//   node peer_node.js ADDR --proto-dir DIR [--target fixture|pruner|agent]
//
// The .proto files are loaded at run time with @grpc/proto-loader. --target
// fixture expects tests/rpc/rpc_test_server's fake handlers; pruner / agent
// only check behaviour any real server must have.
'use strict';
const path = require('path');
const crypto = require('crypto');
// Resolve packages from the repository's node_modules wherever this runs from.
const repoRoot = path.resolve(__dirname, '..', '..');
const grpc = require(require.resolve('@grpc/grpc-js', { paths: [repoRoot] }));
const protoLoader = require(require.resolve('@grpc/proto-loader', { paths: [repoRoot] }));

function parseArgs(argv) {
  const out = { addr: null, protoDir: path.join(repoRoot, 'proto'), target: 'fixture' };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--proto-dir') out.protoDir = argv[++i];
    else if (argv[i] === '--target') out.target = argv[++i];
    else if (!out.addr) out.addr = argv[i];
    else throw new Error('unexpected argument ' + argv[i]);
  }
  if (!out.addr || !['fixture', 'pruner', 'agent'].includes(out.target)) {
    throw new Error('usage: peer_node.js ADDR [--proto-dir DIR] [--target fixture|pruner|agent]');
  }
  return out;
}

let failures = 0;
function check(cond, what) {
  if (cond) console.log('ok   ' + what);
  else { failures++; console.log('FAIL ' + what); }
}

// Resolves to {code, resp, details} for a unary call.
function unary(client, method, req) {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + 10000);
    client[method](req, { deadline }, (err, resp) => {
      if (err) resolve({ code: err.code, resp: null, details: err.details });
      else resolve({ code: grpc.status.OK, resp, details: '' });
    });
  });
}

function stream(client, method, req) {
  return new Promise((resolve) => {
    const msgs = [];
    const call = client[method](req, { deadline: new Date(Date.now() + 10000) });
    call.on('data', (m) => msgs.push(m));
    call.on('error', (err) => resolve({ code: err.code, msgs }));
    call.on('end', () => resolve({ code: grpc.status.OK, msgs }));
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const def = protoLoader.loadSync(
    ['agentprune/v1/pruner.proto', 'agentprune/v1/agent.proto', 'grpc/health/v1/health.proto'],
    { includeDirs: [args.protoDir], keepCase: true, longs: Number, enums: String, defaults: true });
  const pkg = grpc.loadPackageDefinition(def);
  const creds = grpc.credentials.createInsecure();
  const health = new pkg.grpc.health.v1.Health(args.addr, creds);
  const pruner = new pkg.agentprune.v1.Pruner(args.addr, creds);
  const agent = new pkg.agentprune.v1.Agent(args.addr, creds);

  let r = await unary(health, 'Check', { service: '' });
  check(r.code === grpc.status.OK && r.resp.status === 'SERVING', `Health/Check "" is SERVING (${r.code})`);
  r = await unary(health, 'Check', { service: 'no.such.Service' });
  check(r.code === grpc.status.NOT_FOUND, `Health/Check of an unknown service is NOT_FOUND (${r.code})`);

  const unknownId = crypto.randomBytes(16).toString('hex'); // well-formed, names nothing
  if (args.target === 'fixture') {
    r = await unary(pruner, 'GetJob', { job_id: 'node-abc' });
    check(r.code === grpc.status.OK && r.resp.id === 'node-abc', `GetJob echoes the id (${r.code})`);
    r = await unary(pruner, 'GetJob', { job_id: 'missing' });
    check(r.code === grpc.status.NOT_FOUND && r.details === 'no job missing',
      `GetJob(missing) is NOT_FOUND with the handler's message (${r.code}, ${r.details})`);
    r = await unary(pruner, 'SubmitJob', { target_sparsity: 2.0 });
    check(r.code === grpc.status.INVALID_ARGUMENT, `SubmitJob(bad sparsity) is INVALID_ARGUMENT (${r.code})`);
    const s = await stream(pruner, 'WatchJob', { job_id: 'n=7,sleep=0', from_seq: 3 });
    check(s.code === grpc.status.OK && s.msgs.map((m) => m.seq).join(',') === '3,4,5,6,7,8,9',
      `WatchJob streams 7 events in order (${s.code}, ${s.msgs.length})`);
    r = await unary(pruner, 'Profile', {});
    check(r.code === grpc.status.UNIMPLEMENTED, `an unregistered method is UNIMPLEMENTED (${r.code})`);
  } else if (args.target === 'pruner') {
    r = await unary(pruner, 'ListJobs', { limit: 1 });
    check(r.code === grpc.status.OK, `ListJobs is OK (${r.code})`);
    r = await unary(pruner, 'GetJob', { job_id: unknownId });
    check(r.code === grpc.status.NOT_FOUND, `GetJob of an unknown job is NOT_FOUND (${r.code})`);
  } else {
    r = await unary(agent, 'GetHistory', { session_id: unknownId });
    check(r.code === grpc.status.NOT_FOUND, `GetHistory of an unknown session is NOT_FOUND (${r.code})`);
  }
  health.close(); pruner.close(); agent.close();
  console.log(`${failures} failed`);
  process.exitCode = failures ? 1 : 0;
}

main().catch((e) => { console.error(e); process.exitCode = 1; });
