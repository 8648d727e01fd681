#!/usr/bin/env node
// JS kappa-core 7 (multifeed 6, hypercore 9 underneath) on the workloads of
// kappa-go's BenchmarkAPI* benchmarks (bench_test.go), through kappa-core's
// public API. Prints one line per run in the shape of `go test -bench`:
//
//   BenchmarkJSAppendJSONBatch  1  <ns/op> ns/op  <x> entries/s
//
// Usage: node bench.js [-count N] [-run REGEXP] [-feeds N]
//
// -run selects workloads by a regular expression on their names (the
// appends of JSAppendJSONBatch run whenever a workload needs their
// database); -feeds sets the number of writers JSNewView10kFeeds tries
// first (10,000).
//
// Every run works on fresh temporary directories under os.tmpdir(), removed
// afterwards. JS never fsyncs, so there is no synced variant.
'use strict'

const fs = require('fs')
const os = require('os')
const path = require('path')
const childProcess = require('child_process')
const v8 = require('v8')
const kappa = require('kappa-core')

const API_ENTRIES = 200000
const API_BATCH = 1000
const SINGLE_APPENDS = 20000 // at least; more until the run lasts 2 s
const SINGLE_MIN_NS = 2e9
const MANY_PER_FEED = 10
const VALUE_SIZE = 100
const CHILD_TIMEOUT_MS = 10 * 60 * 1000

// apiValues returns n JSON documents of about 100 bytes, the same as Go's
// apiValues: uint32(i)*2654435761 wraps modulo 2^32, as Math.imul does.
function apiValues (n) {
  const vals = new Array(n)
  for (let i = 0; i < n; i++) {
    const h = (Math.imul(i, 2654435761) >>> 0).toString(16).padStart(8, '0')
    const author = 'user-' + String(i % 1000).padStart(3, '0')
    // Built from the object, so that hypercore's json encoding
    // (JSON.stringify) writes exactly Go's bytes.
    vals[i] = { type: 'chat', author: author, seq: i, text: 'the quick brown fox ' + h, ok: true }
  }
  return vals
}

// binaryValues returns n pseudo-random values of size bytes (Go's
// benchValues uses its own generator: the bytes differ, the sizes do not).
function binaryValues (n, size) {
  let x = 0x9e3779b9 ^ (n * 31 + size)
  const vals = []
  for (let i = 0; i < n; i++) {
    const b = Buffer.alloc(size)
    for (let j = 0; j < size; j++) {
      x ^= x << 13; x ^= x >>> 17; x ^= x << 5
      b[j] = x & 0xff
    }
    vals.push(b)
  }
  return vals
}

// Promise wrappers of kappa-core's callback API.
function open (dir, opts) {
  const core = kappa(dir, Object.assign({ valueEncoding: 'json' }, opts))
  core.on('error', function (err) { core._lastError = err })
  return core
}
function writer (core, name) {
  return new Promise(function (resolve, reject) {
    core.writer(name, function (err, feed) { err ? reject(err) : resolve(feed) })
  })
}
function append (feed, data) {
  return new Promise(function (resolve, reject) {
    feed.append(data, function (err, seq) { err ? reject(err) : resolve(seq) })
  })
}
function ready (core) {
  return new Promise(function (resolve) { core.ready(resolve) })
}
// kappa-core 7 has no close: its multifeed (core._logs) closes the feeds.
function close (core) {
  return new Promise(function (resolve, reject) {
    core._logs.close(function (err) { err ? reject(err) : resolve() })
  })
}

function tmpdir () {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'kappa-js-bench-'))
}
function rmdir (dir) {
  fs.rmSync(dir, { recursive: true, force: true })
}
function now () { return process.hrtime.bigint() }
function elapsedNs (t0) { return Number(process.hrtime.bigint() - t0) }

function fmt (x) {
  if (x >= 100) return x.toFixed(0)
  if (x >= 10) return x.toFixed(1)
  return x.toPrecision(3)
}
// report prints a line in go test -bench's shape: name, N, ns/op and the
// metrics given as [value, unit] pairs.
function report (name, n, ns, metrics) {
  let line = 'Benchmark' + name.padEnd(28) + ' ' + String(n).padStart(8) + ' ' +
    fmt(ns / n).padStart(14) + ' ns/op'
  for (const [v, unit] of metrics || []) line += ' ' + fmt(v).padStart(12) + ' ' + unit
  console.log(line)
}

// 1. JSAppendJSONBatch: 200,000 values in calls of 1,000 to a writer of a
// new database; only the appends are timed. Returns the directory, closed,
// for the workloads that reopen it.
async function appendJSONBatch () {
  const vals = apiValues(API_BATCH)
  const dir = tmpdir()
  const core = open(dir)
  const feed = await writer(core, 'w')
  const t0 = now()
  for (let i = 0; i < API_ENTRIES / API_BATCH; i++) await append(feed, vals)
  const ns = elapsedNs(t0)
  if (feed.length !== API_ENTRIES) throw new Error('appended ' + feed.length)
  await close(core)
  report('JSAppendJSONBatch', 1, ns, [[API_ENTRIES / ns * 1e9, 'entries/s']])
  return dir
}

// 2, 3. Reopen the database, use a view, wait for ready: all timed, closing
// not. The view's map(msgs, next) gets the values hypercore already
// decoded (valueEncoding json: JSON.parse of every block).
async function indexRun (name, dir, encoding, makeView) {
  const v = makeView()
  const t0 = now()
  const core = open(dir, { valueEncoding: encoding })
  core.use('v', 1, v.view)
  await ready(core)
  const ns = elapsedNs(t0)
  if (core._lastError) throw core._lastError
  await close(core)
  if (v.n() !== API_ENTRIES) throw new Error(name + ': indexed ' + v.n() + ' of ' + API_ENTRIES)
  report(name, 1, ns, [[API_ENTRIES / ns * 1e9, 'entries/s']])
}

// JSIndexJSONCount: counts entries and the bytes of JSON.stringify of each
// (decoded) value: the raw block is out of a json view's reach.
function countView () {
  let n = 0; let bytes = 0
  return {
    n: () => n,
    view: {
      maxBatch: 100,
      map: function (msgs, next) {
        n += msgs.length
        for (const m of msgs) bytes += JSON.stringify(m.value).length
        next()
      }
    }
  }
}

// JSIndexBinaryCount (extra): the same database opened with valueEncoding
// binary, so that the view counts the raw blocks' bytes as Go's bytesView
// does and no JSON is parsed at all.
function rawCountView () {
  let n = 0; let bytes = 0
  return {
    n: () => n,
    view: {
      maxBatch: 100,
      map: function (msgs, next) {
        n += msgs.length
        for (const m of msgs) bytes += m.value.length
        next()
      }
    }
  }
}

// JSIndexJSONDecode: reads fields of every decoded value (hypercore has
// parsed it already), as Go's decodeView decodes each and sums Seq.
function decodeView () {
  let n = 0; let seqs = 0
  return {
    n: () => n,
    view: {
      maxBatch: 100,
      map: function (msgs, next) {
        for (const m of msgs) {
          const v = m.value
          if (typeof v.type !== 'string' || typeof v.author !== 'string' ||
              typeof v.text !== 'string' || typeof v.ok !== 'boolean') {
            return next(new Error('bad value at ' + m.seq))
          }
          n++
          seqs += v.seq
        }
        next()
      }
    }
  }
}

// 4. JSAppendJSONSingle: one value per append call, each waiting for the
// previous callback, on a new database; at least 20,000 calls and 2 s.
async function appendJSONSingle () {
  const vals = apiValues(API_BATCH)
  const dir = tmpdir()
  const core = open(dir)
  const feed = await writer(core, 'w')
  let i = 0
  const t0 = now()
  let ns = 0
  for (;;) {
    await append(feed, vals[i % API_BATCH])
    i++
    if (i >= SINGLE_APPENDS && i % 1000 === 0) {
      ns = elapsedNs(t0)
      if (ns >= SINGLE_MIN_NS) break
    }
  }
  await close(core)
  rmdir(dir)
  report('JSAppendJSONSingle', i, ns, [[i / ns * 1e9, 'entries/s']])
}

// 5. JSGetJSON: feed.get of each of the 200,000 entries of the reopened
// database in turn, each waiting for the previous callback. Reopening is not
// timed. MB/s counts the bytes of JSON.stringify of the values (Go's: the
// raw values).
async function getJSON (dir) {
  const core = open(dir)
  const feed = await writer(core, 'w')
  await new Promise(resolve => feed.ready(resolve))
  if (feed.length !== API_ENTRIES) throw new Error('reopened feed has ' + feed.length)
  let bytes = 0
  const t0 = now()
  for (let i = 0; i < API_ENTRIES; i++) {
    const v = await new Promise(function (resolve, reject) {
      feed.get(i, function (err, v) { err ? reject(err) : resolve(v) })
    })
    if (v.seq !== i % API_BATCH) throw new Error('get ' + i + ': seq ' + v.seq)
    bytes += JSON.stringify(v).length
  }
  const ns = elapsedNs(t0)
  await close(core)
  report('JSGetJSON', API_ENTRIES, ns, [[API_ENTRIES / ns * 1e9, 'entries/s'], [bytes / 1e6 / ns * 1e9, 'MB/s']])
}

// 6. JSNewView<N>Feeds: a database of N writers of 10 values of 100 bytes
// (binary, as Go's fixture), reopened (kappa() up to the multifeed's ready,
// all feeds loaded: timed apart, as Go's Open is not timed), then a counting
// view from use to ready (timed). The open and the index run in a child
// process, so that a crash (an uncaught EMFILE, the JS heap running out) or a
// hang ends only that attempt.
//
// The database is built once per process and size, without kappa-core:
// each writer is a hypercore in multifeed's layout (<dir>/<n>/, its name in
// <n>/localname), written and closed in turn, as multifeed's writer() would
// have made it. Building it through kappa-core cannot reach 10,000 writers:
// multifeed keeps every writer's hypercore, and each holds about 540 KB of
// JS heap (two sparse bitfields' page tables of 32,768 slots) even once
// closed, so node's default heap (4 GB here) runs out at about 7,400.
const hypercore = require('hypercore')
const raf = require('random-access-file')
const manyFixtures = new Map()
// KEEP_FIXTURES=1 in the environment keeps them, to rerun a child by hand.
process.on('exit', function () { if (!process.env.KEEP_FIXTURES) for (const dir of manyFixtures.values()) rmdir(dir) })

async function buildManyFeeds (feeds) {
  if (manyFixtures.has(feeds)) return manyFixtures.get(feeds)
  const dir = tmpdir()
  manyFixtures.set(feeds, dir)
  const vals = binaryValues(MANY_PER_FEED, VALUE_SIZE)
  const one = async function (i) {
    const sub = path.join(dir, String(i))
    fs.mkdirSync(sub, { recursive: true })
    fs.writeFileSync(path.join(sub, 'localname'), 'w' + i)
    const feed = hypercore(name => raf(path.join(sub, name)), { valueEncoding: 'binary' })
    await new Promise((resolve, reject) => feed.ready(err => err ? reject(err) : resolve()))
    await append(feed, vals)
    await new Promise((resolve, reject) => feed.close(err => err ? reject(err) : resolve()))
  }
  const lanes = 16
  let next = 0
  await Promise.all(Array.from({ length: lanes }, async function () {
    while (next < feeds) await one(next++)
  }))
  return dir
}

async function manyFeedsChild (feeds, dir) {
  let stage = 'open'
  let core = null
  const s0 = now()
  // The last STAGE line tells the parent where a crash happened.
  const progress = function () {
    // Nothing here may need a file descriptor but /proc/self/fd's, which
    // fails quietly: the heap comes from V8, not from /proc.
    const heap = v8.getHeapStatistics().used_heap_size
    let fds = '?'
    try { fds = fs.readdirSync('/proc/self/fd').length } catch (e) {}
    const loaded = core ? core._logs.feeds().length : 0
    console.log('STAGE ' + stage + ' after ' + (elapsedNs(s0) / 1e9).toFixed(1) + ' s: ' + loaded +
      ' feeds loaded, ' + fds + ' fds, heap ' + (heap / 1e6).toFixed(0) + ' MB')
  }
  let failed = false
  const fail = function (err) {
    if (failed) return
    failed = true
    console.log('FAIL ' + stage + ': ' + (err && err.stack ? err.stack.split('\n').slice(0, 4).map(l => l.trim()).join(' | ') : String(err)))
    progress()
    process.exit(1)
  }
  process.on('uncaughtException', fail)
  const ticker = setInterval(progress, 1000)
  try {
    const t0 = now()
    core = open(dir, { valueEncoding: 'binary' })
    core.on('error', fail)
    await ready(core) // no views yet: the multifeed's ready, all feeds loaded
    const openNs = elapsedNs(t0)
    if (core.feeds().length !== feeds) throw new Error('opened ' + core.feeds().length + ' feeds of ' + feeds)

    stage = 'index'
    let n = 0
    const t1 = now()
    core.use('count', 1, { maxBatch: 100, map: function (msgs, next) { n += msgs.length; next() } })
    await ready(core)
    const ns = elapsedNs(t1)
    if (n !== feeds * MANY_PER_FEED) throw new Error('indexed ' + n + ' of ' + feeds * MANY_PER_FEED)
    const rss = process.memoryUsage().rss
    stage = 'close'
    clearInterval(ticker)
    await close(core)
    console.log('OK ' + JSON.stringify({ ns, openNs, rss }))
    process.exit(0)
  } catch (err) {
    fail(err)
  }
}

async function runChild (feeds) {
  const dir = await buildManyFeeds(feeds)
  const r = childProcess.spawnSync(process.execPath, [__filename, '-child-feeds', String(feeds), dir], {
    encoding: 'utf8', timeout: CHILD_TIMEOUT_MS, maxBuffer: 64 << 20
  })
  const out = (r.stdout || '').trim().split('\n').filter(Boolean)
  const ok = out.find(l => l.startsWith('OK '))
  if (ok) return { ok: JSON.parse(ok.slice(3)) }
  const stages = out.filter(l => l.startsWith('STAGE '))
  const where = stages.length ? ' [then: ' + stages[stages.length - 1].slice(6) + ']' : ''
  const failed = out.find(l => l.startsWith('FAIL '))
  if (failed) return { error: failed.slice(5) + where }
  if (r.error) return { error: String(r.error) + (r.error.code === 'ETIMEDOUT' ? ' (after ' + CHILD_TIMEOUT_MS / 1000 + ' s)' : '') + where }
  const err = (r.stderr || '').trim().split('\n').filter(l => /error|Error|ERR/.test(l)).slice(0, 3).join(' | ')
  return { error: 'exit ' + r.status + (r.signal ? ' signal ' + r.signal : '') + ': ' + err + where }
}

function reportMany (feeds, ok) {
  const total = feeds * MANY_PER_FEED
  report('JSNewView' + (feeds % 1000 === 0 ? feeds / 1000 + 'k' : feeds) + 'Feeds', 1, ok.ns, [
    [total / ok.ns * 1e9, 'entries/s'],
    [ok.openNs / 1e6, 'open-ms'],
    [ok.rss / 1e6, 'rss-MB']
  ])
}

// 6. Tries 10,000 feeds; if that fails, says why and tries 5,000, 2,500
// and 1,000 in turn until one works.
async function newViewManyFeeds (first) {
  const r = await runChild(first)
  if (r.ok) return reportMany(first, r.ok)
  console.log('# JSNewView10kFeeds: ' + first + ' feeds failed: ' + r.error)
  for (const feeds of [5000, 2500, 1000].filter(n => n < first)) {
    const s = await runChild(feeds)
    if (s.ok) return reportMany(feeds, s.ok)
    console.log('# JSNewView10kFeeds: ' + feeds + ' feeds failed: ' + s.error)
  }
}

async function main () {
  const args = process.argv.slice(2)
  if (args[0] === '-child-feeds') return manyFeedsChild(Number(args[1]), args[2])
  let count = 3
  let run = /./
  let manyFeeds = 10000
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '-count') count = Number(args[++i])
    else if (args[i] === '-run') run = new RegExp(args[++i])
    else if (args[i] === '-feeds') manyFeeds = Number(args[++i])
    else {
      console.error('usage: node bench.js [-count N] [-run REGEXP] [-feeds N]')
      process.exit(2)
    }
  }
  if (!(count >= 1)) throw new Error('bad -count')
  console.log('goos: ' + process.platform)
  console.log('goarch: ' + process.arch)
  console.log('pkg: kappa-core@' + require('kappa-core/package.json').version +
    ' multifeed@' + require('multifeed/package.json').version +
    ' multifeed-index@' + require('multifeed-index/package.json').version +
    ' hypercore@' + require('hypercore/package.json').version + ' node ' + process.version)
  console.log('cpu: ' + os.cpus()[0].model + ' (' + os.cpus().length + ' CPUs)')
  const want = name => run.test('JS' + name)
  for (let r = 0; r < count; r++) {
    const dir = ['AppendJSONBatch', 'IndexJSONCount', 'IndexBinaryCount', 'IndexJSONDecode', 'GetJSON'].some(want) ? await appendJSONBatch() : null
    if (dir) try {
      if (want('IndexJSONCount')) await indexRun('JSIndexJSONCount', dir, 'json', countView)
      if (want('IndexBinaryCount')) await indexRun('JSIndexBinaryCount', dir, 'binary', rawCountView)
      if (want('IndexJSONDecode')) await indexRun('JSIndexJSONDecode', dir, 'json', decodeView)
      if (want('GetJSON')) await getJSON(dir)
    } finally {
      rmdir(dir)
    }
    if (want('AppendJSONSingle')) await appendJSONSingle()
    if (want('NewView10kFeeds')) await newViewManyFeeds(manyFeeds)
  }
}

if (require.main === module) {
  main().catch(function (err) {
    console.error(err)
    process.exit(1)
  })
}
module.exports = { apiValues, buildManyFeeds }
