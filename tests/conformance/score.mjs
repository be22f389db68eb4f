// Scores raw results of the HTTP caching test suite with the suite's own classification.
//
//   node score.mjs score RAW.json --proxy NAME [--version V] [--out FILE.json] [--brief]
//                                          (RAW.json: client.mjs's output, or a FILE.json)
//   node score.mjs table FILE.json...      comparison table of scored results
//   node score.mjs published               the results shipped in the suite (results/*.json,
//                                          older versions of each proxy), scored the same way
//
// Classification (http-cache-tests lib/display.mjs, determineTestResult, used as is):
//  - every test has a kind: "required" (or none: required), "optimal" or "check";
//  - a result is pass, fail (required) / optional_fail (optimal) / yes, no (check), or, before
//    any of those, dependency_fail (a test in its depends_on did not pass), setup_fail (the test's
//    premise did not hold, e.g. a response was not cached when it had to be), retry (the cache
//    retried a request), harness_fail or untested.
// Score: required passed / required total and optional (kind "optimal") passed / total, where
// passed means the suite's pass (✅) and nothing else; "check" tests only record behaviour
// (yes/no) and are not scored. `score` exits 1 when a required test did not pass, except the
// ones listed in unpassable.json: required tests that no cache can pass in this version of the
// suite (its reason says why), reported apart and counted in the score as the suite counts them.
import fs from 'fs'
import path from 'path'
import process from 'process'
import { fileURLToPath } from 'url'

import tests from 'http-cache-tests/tests/index.mjs'
import surrogate from 'http-cache-tests/tests/surrogate-control.mjs'
import * as display from 'http-cache-tests/lib/display.mjs'

tests.push(surrogate) // the suite's CLI runs these too
const here = path.dirname(fileURLToPath(import.meta.url))
const suitePkg = JSON.parse(fs.readFileSync(path.join(here, 'node_modules/http-cache-tests/package.json')))
const SUITE = `http-cache-tests ${suitePkg.version}`
const unpassableDoc = JSON.parse(fs.readFileSync(path.join(here, 'unpassable.json')))
if (unpassableDoc.suite !== SUITE) {
  console.error(`score.mjs: unpassable.json is for ${unpassableDoc.suite}, the suite is ${SUITE}: check its list again`)
  process.exit(2)
}
const UNPASSABLE = new Set(unpassableDoc.tests)

const SYMBOL_NAME = {
  '✅': 'pass',
  '⛔️': 'fail',
  '⚠️': 'optional_fail',
  Y: 'yes',
  N: 'no',
  '🔹': 'setup_fail',
  '⁉️': 'harness_fail',
  '⚪️': 'dependency_fail',
  '↻': 'retry',
  '-': 'untested'
}

function allTests () {
  const out = []
  for (const suite of tests) {
    for (const t of suite.tests) {
      if (t.browser_only === true) continue // the CLI never runs these
      out.push({ suite: suite.name, test: t })
    }
  }
  return out
}

function detailOf (t, raw, result) {
  const r = raw[t.id]
  if (result === 'dependency_fail') {
    const bad = (t.depends_on || []).filter(d =>
      !['pass', 'yes'].includes(SYMBOL_NAME[display.determineTestResult(tests, d, raw)[2]]))
    return `depends on ${bad.join(', ')}, which did not pass`
  }
  if (result === 'untested') return 'no result (not run)'
  if (Array.isArray(r)) return `${r[0]}: ${r[1]}`
  if (r === false) return 'false'
  return ''
}

export function classify (raw) {
  const results = {}
  const summary = {
    required: { passed: 0, total: 0, unpassable: 0 },
    optional: { passed: 0, total: 0 },
    check: { yes: 0, no: 0, other: 0, total: 0 },
    by_result: {}
  }
  for (const { suite, test: t } of allTests()) {
    const kind = t.kind === undefined ? 'required' : t.kind
    const result = SYMBOL_NAME[display.determineTestResult(tests, t.id, raw)[2]]
    if (result === undefined) throw new Error(`unknown result for ${t.id}`)
    const entry = { kind, result, name: t.name, suite }
    const detail = detailOf(t, raw, result)
    if (detail) entry.detail = detail
    results[t.id] = entry
    const key = `${kind}:${result}`
    summary.by_result[key] = (summary.by_result[key] || 0) + 1
    if (kind === 'required') {
      summary.required.total++
      if (result === 'pass') summary.required.passed++
      if (UNPASSABLE.has(t.id)) summary.required.unpassable++
    } else if (kind === 'optimal') {
      summary.optional.total++
      if (result === 'pass') summary.optional.passed++
    } else {
      summary.check.total++
      if (result === 'yes') summary.check.yes++
      else if (result === 'no') summary.check.no++
      else summary.check.other++
    }
  }
  return { summary, results }
}

function failing (results, kind) {
  return Object.entries(results)
    .filter(([, e]) => e.kind === kind && e.result !== 'pass')
    .map(([id, e]) => ({ id, ...e }))
}

function plainName (name) {
  return name.replace(/`/g, '')
}

function printList (title, list) {
  if (!list.length) return
  console.log(title)
  for (const e of list) {
    console.log(`  ${e.id} [${e.result}] ${plainName(e.name)}`)
    if (e.detail) console.log(`      ${e.detail}`)
  }
}

function scoreLine (s) {
  const u = s.required.unpassable
  return `required ${s.required.passed}/${s.required.total}` +
    (u ? ` (${u} of them unpassable in this suite version), ` : ', ') +
    `optional ${s.optional.passed}/${s.optional.total}, ` +
    `checks ${s.check.yes} yes / ${s.check.no} no`
}

function cmdScore (args) {
  let rawPath; let proxy = 'proxy'; let version = ''; let out = ''; let brief = false
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--proxy') proxy = args[++i]
    else if (args[i] === '--version') version = args[++i]
    else if (args[i] === '--out') out = args[++i]
    else if (args[i] === '--brief') brief = true
    else rawPath = args[i]
  }
  if (!rawPath) usage()
  let raw = JSON.parse(fs.readFileSync(rawPath))
  if (raw.raw && raw.results) raw = raw.raw // a file this script wrote: score its raw results again
  const { summary, results } = classify(raw)
  const reqAll = failing(results, 'required')
  const reqFail = reqAll.filter(e => !UNPASSABLE.has(e.id))
  const reqUnpassable = reqAll.filter(e => UNPASSABLE.has(e.id))
  const optFail = failing(results, 'optimal')
  if (out) {
    const doc = {
      proxy,
      version,
      suite: SUITE,
      date: new Date().toISOString(),
      summary,
      failing_required: reqFail,
      failing_required_unpassable: reqUnpassable,
      failing_optional: optFail,
      results,
      raw
    }
    fs.mkdirSync(path.dirname(out), { recursive: true })
    fs.writeFileSync(out, JSON.stringify(doc, null, 2) + '\n')
  }
  if (!brief) {
    printList(`Required tests not passed (${reqFail.length}):`, reqFail)
    if (reqUnpassable.length) {
      console.log(`Required tests that no cache can pass in ${SUITE} (${reqUnpassable.length}; ` +
        'tests/conformance/unpassable.json says why; not a failure of make conformance):')
      console.log('  ' + reqUnpassable.map(e => `${e.id} [${e.result}]`).join(', '))
    }
    printList(`Optional tests not passed (${optFail.length}):`, optFail)
    console.log('')
  }
  console.log(`${proxy}${version ? ' (' + version + ')' : ''}: ${scoreLine(summary)}  [${SUITE}]`)
  return reqFail.length ? 1 : 0
}

function table (rows) {
  const headers = ['proxy', 'version', 'required', 'optional', 'checks yes/no', 'required not passed: fail/dep/setup/other']
  const cells = rows.map(({ name, version, summary: s }) => {
    const r = s.by_result
    const f = (r['required:fail'] || 0)
    const d = (r['required:dependency_fail'] || 0)
    const su = (r['required:setup_fail'] || 0)
    const o = s.required.total - s.required.passed - f - d - su
    return [name, version || '', `${s.required.passed}/${s.required.total}`,
      `${s.optional.passed}/${s.optional.total}`, `${s.check.yes}/${s.check.no}`, `${f}/${d}/${su}/${o}`]
  })
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map(c => c[i].length)))
  const line = c => c.map((x, i) => i < 2 ? x.padEnd(widths[i]) : x.padStart(widths[i])).join('  ').trimEnd()
  console.log(line(headers))
  console.log(line(widths.map(w => '-'.repeat(w))))
  for (const c of cells) console.log(line(c))
}

function cmdTable (files) {
  const rows = []
  for (const f of files) {
    const doc = JSON.parse(fs.readFileSync(f))
    rows.push({ name: doc.proxy, version: doc.version, summary: doc.summary })
  }
  table(rows)
  return 0
}

async function cmdPublished () {
  const index = (await import('http-cache-tests/results/index.mjs')).default
  const rows = []
  for (const item of index) {
    if (item.type === 'browser') continue
    const raw = JSON.parse(fs.readFileSync(path.join(here, 'node_modules/http-cache-tests/results', item.file)))
    rows.push({ name: item.name, version: item.version, summary: classify(raw).summary })
  }
  console.log(`Results shipped with ${SUITE} (results/*.json), scored as above:`)
  table(rows)
  return 0
}

function usage () {
  console.error('usage: node score.mjs score RAW.json --proxy NAME [--version V] [--out FILE] [--brief]\n' +
    '       node score.mjs table FILE.json...\n       node score.mjs published')
  process.exit(2)
}

const [cmd, ...rest] = process.argv.slice(2)
try {
  if (cmd === 'score') process.exit(cmdScore(rest))
  else if (cmd === 'table') process.exit(cmdTable(rest))
  else if (cmd === 'published') process.exit(await cmdPublished())
  else usage()
} catch (err) { // a broken input or suite: not a score, so not exit 1
  console.error(`score.mjs: ${err.stack || err}`)
  process.exit(2)
}
