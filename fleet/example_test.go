package fleet_test

import (
	"context"
	"fmt"
	"log"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/plugincontrol/plugincontrol/fleet"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// Set a fleet plugin for the nodes labelled role=web, then roll a new
// version out to them: one canary, then waves of two, each node baked for
// 30s. (plugind --fleet-etcd serves the same through FleetService, and
// pluginctl fleet drives it.)
func Example() {
	ctx := context.Background()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://127.0.0.1:2379"}, DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	store := fleet.NewStore(cli, fleet.DefaultPrefix)

	spec := &pb.PluginSpec{Name: "greet", Binary: "greet", Sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}
	if _, err := store.Apply(ctx, &pb.FleetPlugin{Spec: spec, Selector: map[string]string{"role": "web"}}, false); err != nil {
		log.Fatal(err)
	}

	v2 := &pb.PluginSpec{Name: "greet", Binary: "greet-v2", Sha256: "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"}
	r, err := store.StartRollout(ctx, v2, &pb.RolloutStrategy{Canary: 1, WaveSize: 2, Bake: durationpb.New(30 * time.Second)}, false)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.GetState(), r.GetWaves(), "waves")
}
