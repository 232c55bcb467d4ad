// Shared helpers for the Node interop peers. Configuration comes from the environment:
//   RELAY_BASE  e.g. wss://127.0.0.1:PORT (the emulator; helpers would force :443, so URIs are built by hand)
//   ENTITY      hybrid connection name
//   SAS_KEY_NAME / SAS_KEY  -> tokens from createRelayToken (Node sr form, port kept)
//   RELAY_TOKEN             -> a ready-made token (e.g. a JWT fetched by the test), used as a token function
'use strict';

function tokenSource(createRelayToken, uri) {
  if (process.env.RELAY_TOKEN) {
    return () => process.env.RELAY_TOKEN;
  }
  return () => createRelayToken(uri, process.env.SAS_KEY_NAME, process.env.SAS_KEY);
}

function log(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

module.exports = { tokenSource, log };
