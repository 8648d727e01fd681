package kappa_test

import (
	"context"
	"fmt"
	"log"

	kappa "github.com/kappa-db/kappa-go"
)

// Two nodes of one database keep each other in sync: Alice's listens, Bob's
// dials it (a static peer; SwarmOptions.LAN would find it on the LAN).
// Synced waits until each holds what the other had.
func ExampleCore_Swarm() {
	alice, err := kappa.New(kappa.NewMemStorage(), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer alice.Close()
	bob, err := kappa.New(kappa.NewMemStorage(), &kappa.Options{SharedKey: alice.SharedKey()})
	if err != nil {
		log.Fatal(err)
	}
	defer bob.Close()
	for name, core := range map[string]*kappa.Core{"alice": alice, "bob": bob} {
		w, err := core.Writer(name)
		if err != nil {
			log.Fatal(err)
		}
		if _, err := w.Append([]byte("hello from " + name)); err != nil {
			log.Fatal(err)
		}
	}

	sa, err := alice.Swarm(&kappa.SwarmOptions{Listen: "127.0.0.1:0"})
	if err != nil {
		log.Fatal(err)
	}
	defer sa.Close()
	connected := make(chan struct{}, 1)
	sb, err := bob.Swarm(&kappa.SwarmOptions{
		Peers: []string{sa.Addr().String()},
		OnPeer: func(p kappa.PeerStatus) {
			if p.State == kappa.PeerSyncing { // a session started
				select {
				case connected <- struct{}{}:
				default:
				}
			}
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Close()

	<-connected
	if err := sb.Synced(context.Background()); err != nil {
		log.Fatal(err)
	}
	for _, f := range bob.Feeds() {
		v, err := f.Get(context.Background(), 0)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("bob holds %q\n", v)
	}
	for _, p := range sb.Peers() {
		fmt.Println(p.Source, p.State, "behind", p.Behind, "ahead", p.Ahead)
	}
	// Output:
	// bob holds "hello from bob"
	// bob holds "hello from alice"
	// static synced behind 0 ahead 0
}
