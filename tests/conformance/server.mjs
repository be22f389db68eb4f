// The suite's own origin server (node_modules/http-cache-tests/server/), bound to loopback.
// Its server.mjs listens on every interface and takes its port from npm's environment; this
// does the same dispatch with the same handlers, on 127.0.0.1 only.
//   node server.mjs PORT
import http from 'http'
import process from 'process'

import handleConfig from 'http-cache-tests/server/handle-config.mjs'
import handleFile from 'http-cache-tests/server/handle-file.mjs'
import handleState from 'http-cache-tests/server/handle-state.mjs'
import handleTest from 'http-cache-tests/server/handle-test.mjs'

const port = parseInt(process.argv[2], 10)
if (!(port > 0 && port < 65536)) {
  console.error('usage: node server.mjs PORT')
  process.exit(2)
}
const baseUrl = `http://127.0.0.1:${port}/`

function handleMain (request, response) { // the suite's server/server.mjs handleMain
  const url = new URL(request.url, baseUrl)
  const pathSegs = url.pathname.split('/')
  pathSegs.shift()
  const dispatch = pathSegs.shift()
  if (dispatch === 'config') {
    handleConfig(pathSegs, request, response)
  } else if (dispatch === 'test') {
    handleTest(pathSegs, request, response)
  } else if (dispatch === 'state') {
    handleState(pathSegs, request, response)
  } else {
    handleFile(url, request, response)
  }
}

const server = http.createServer(handleMain)
server.on('listening', () => console.log(`Listening on ${baseUrl}`))
server.listen(port, '127.0.0.1')
process.on('SIGTERM', () => process.exit(0))
