package kappa

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"
)

// Benchmarks of the swarm: discovery and sync of eight nodes, an idle peer.

// BenchmarkSwarmIdlePeer connects 50 nodes (empty in-memory databases:
// the cost measured is the connection's, not its feeds') to one node as
// static peers, waits until every session is synced and idle, and
// reports what an idle peer connection
// costs: live heap plus goroutine stacks (after a GC), and goroutines,
// per connection. Both ends of each connection run in this process, so
// each figure is for both: the peer's swarm (its dial loop) and session,
// and the hub's session. The databases are opened before the baseline.
func BenchmarkSwarmIdlePeer(b *testing.B) {
	const peers = 50
	mem := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc + ms.StackInuse
	}
	var perPeer, goPerPeer float64
	run := func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		hub, err := New(NewMemStorage(), nil)
		if err != nil {
			b.Fatal(err)
		}
		defer hub.Close()
		hs, err := hub.Swarm(&SwarmOptions{Listen: "127.0.0.1:0"})
		if err != nil {
			b.Fatal(err)
		}
		cores := make([]*Core, peers)
		for i := range cores {
			c, err := New(NewMemStorage(), &Options{SharedKey: hub.SharedKey()})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			cores[i] = c
		}
		baseMem, baseG := mem(), runtime.NumGoroutine()
		for _, c := range cores {
			if _, err := c.Swarm(&SwarmOptions{Peers: []string{hs.Addr().String()}}); err != nil {
				b.Fatal(err)
			}
		}
		for {
			changed := hs.changes()
			if _, running := sessionCounts(hs); running == peers {
				break
			}
			select {
			case <-changed:
			case <-ctx.Done():
				b.Fatal("the peers did not all connect")
			}
		}
		if err := hs.Synced(ctx); err != nil {
			b.Fatal(err)
		}
		perPeer = (float64(mem()) - float64(baseMem)) / peers
		goPerPeer = float64(runtime.NumGoroutine()-baseG) / peers
		hs.Close()
	}
	for b.Loop() {
		run()
	}
	b.ReportMetric(perPeer, "B/peer")
	b.ReportMetric(goPerPeer, "goroutines/peer")
}

// BenchmarkSwarm8NodesLAN: eight nodes of one database, each holding 1,000
// entries of its own (100 B), start their swarms at once and find each
// other by LAN discovery on this machine: real multicast where it works
// (listening on every interface, since beacons come from the interface's
// address), else the in-memory beacon hub on 127.0.0.1. Reported: ms from
// start until every node holds all 8,000 entries and Synced returned on
// every node (target: under 2 s on a 2-core machine), and, within it, ms
// until every node had found the seven others (discovery-ms).
func BenchmarkSwarm8NodesLAN(b *testing.B) {
	const nodes, entries = 8, 1000
	multicast, why := multicastWorks(b)
	if !multicast {
		b.Logf("no multicast here (%s): beacons through the in-memory hub", why)
	}
	vals := benchValues(entries, benchValueSize)
	var discovery, synced time.Duration
	for b.Loop() {
		b.StopTimer()
		var hub *beaconHub
		if !multicast {
			hub = newBeaconHub()
		}
		var key []byte
		cores := make([]*Core, nodes)
		for i := range cores {
			c, err := New(NewMemStorage(), &Options{SharedKey: key})
			if err != nil {
				b.Fatal(err)
			}
			key = c.SharedKey()
			w, err := c.Writer("w")
			if err != nil {
				b.Fatal(err)
			}
			if _, err := w.Append(vals...); err != nil {
				b.Fatal(err)
			}
			cores[i] = c
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		b.StartTimer()
		start := time.Now()
		sws := make([]*Swarm, nodes)
		for i, c := range cores {
			opts := &SwarmOptions{LAN: true, Listen: ":0"}
			if hub != nil {
				opts = &SwarmOptions{LAN: true, Listen: "127.0.0.1:0", lanTransport: hub.transport(net.IPv4(127, 0, 0, 1))}
			}
			sw, err := c.Swarm(opts)
			if err != nil {
				b.Fatal(err)
			}
			sws[i] = sw
		}
		found := func() bool {
			for _, sw := range sws {
				sw.mu.Lock()
				n := len(sw.lanNodes)
				sw.mu.Unlock()
				if n < nodes-1 {
					return false
				}
			}
			return true
		}
		holdAll := func() bool {
			for _, c := range cores {
				fs := c.Feeds()
				if len(fs) != nodes {
					return false
				}
				for _, f := range fs {
					if f.Len() != entries || !f.HasRange(0, entries) {
						return false
					}
				}
			}
			return true
		}
		waitSwarms(b, ctx, sws, "every node found the others", found)
		discovery += time.Since(start)
		waitSwarms(b, ctx, sws, "every node holds every entry", holdAll)
		for _, sw := range sws {
			if err := sw.Synced(ctx); err != nil {
				b.Fatal(err)
			}
		}
		synced += time.Since(start)
		b.StopTimer()
		for i := range cores {
			sws[i].Close()
			cores[i].Close()
		}
		cancel()
		b.StartTimer()
	}
	b.ReportMetric(synced.Seconds()*1e3/float64(b.N), "ms/sync")
	b.ReportMetric(discovery.Seconds()*1e3/float64(b.N), "discovery-ms")
	b.ReportMetric(0, "ns/op")
}
