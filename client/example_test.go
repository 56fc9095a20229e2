package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/plugincontrol/plugincontrol/client"
	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// Connect to the local daemon and list its plugins.
func ExampleDial() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := client.Dial(ctx, client.DefaultAddr())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	resp, err := c.Control().ListPlugins(ctx, &plugincontrolv1.ListPluginsRequest{})
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range resp.GetPlugins() {
		fmt.Println(p.GetName(), p.GetGeneration(), p.GetState())
	}
}

// Call a method of a plugin through the daemon's gateway.
func ExampleClient_Gateway() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "unix:///run/plugind/plugind.sock", client.WithToken("s3cret"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	resp, err := c.Gateway().Invoke(ctx, &plugincontrolv1.InvokeRequest{
		Plugin:  "echo",
		Method:  "echo",
		Payload: []byte("hello"),
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s (generation %d)\n", resp.GetPayload(), resp.GetGeneration())
}

// DefaultAddr honours PLUGIND_ADDR.
func ExampleDefaultAddr() {
	fmt.Println(client.DefaultAddr() != "")
	// Output: true
}
