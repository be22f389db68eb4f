// Runs the suite's tests against BASE and writes its raw results (the JSON that the suite's
// cli.mjs prints: test id -> true | [error name, message]) to OUT.
//
//   node client.mjs BASE OUT [--id TEST-ID] [--chunk N] [--request-timeout SECONDS]
//
// It is the suite's cli.mjs (same tests, runner, fetch and result format) with two changes,
// neither of which changes what a test sends or how its result is judged:
//  - every request has a deadline (default 20 s, longer than any test needs): a cache that never
//    finishes a response fails that test (FetchError "aborted") instead of hanging the run;
//  - with --id, the exchange is dumped as the CLI does, and the result is written too.
// --chunk N runs N tests at a time (the CLI's 100 by default; 0: all at once, about half the
// time: each test has its own URL, so they do not interfere).
import fs from 'fs'
import process from 'process'
import fetch from 'node-fetch'

import { runTests, getResults } from 'http-cache-tests/client/runner.mjs'
import tests from 'http-cache-tests/tests/index.mjs'
import surrogate from 'http-cache-tests/tests/surrogate-control.mjs'

const args = process.argv.slice(2)
const positional = []
let testId = ''
let chunk = 100
let requestTimeout = 20
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--id') testId = args[++i]
  else if (args[i] === '--chunk') chunk = parseInt(args[++i], 10)
  else if (args[i] === '--request-timeout') requestTimeout = parseFloat(args[++i])
  else positional.push(args[i])
}
if (positional.length !== 2 || !(chunk >= 0) || !(requestTimeout > 0)) {
  console.error('usage: node client.mjs BASE OUT [--id TEST-ID] [--chunk N] [--request-timeout SECONDS]')
  process.exit(2)
}
const [base, out] = positional

tests.push(surrogate) // as cli.mjs does

let testsToRun = tests
if (testId) {
  testsToRun = []
  for (const suite of tests) {
    for (const test of suite.tests) {
      if (test.id === testId) {
        test.dump = true
        testsToRun = [{ name: suite.name, id: suite.id, description: suite.description, tests: [test] }]
      }
    }
  }
  if (!testsToRun.length) {
    console.error(`no test with id ${testId}`)
    process.exit(2)
  }
}
let n = 0
for (const suite of testsToRun) n += suite.tests.filter(t => t.browser_only !== true).length

function fetchWithDeadline (url, init) {
  const ac = new AbortController()
  const timer = setTimeout(() => ac.abort(), requestTimeout * 1000)
  timer.unref()
  return fetch(url, Object.assign({}, init, { signal: ac.signal }))
}

runTests(testsToRun, fetchWithDeadline, false, base, chunk > 0 ? chunk : n)
  .then(() => {
    const results = getResults()
    fs.writeFileSync(out, JSON.stringify(results, null, 2) + '\n')
    if (testId) {
      console.log(`==== Result: ${JSON.stringify(results[testId])}`)
    }
    process.exit(0)
  })
  .catch(err => {
    console.error(err)
    process.exit(1)
  })
