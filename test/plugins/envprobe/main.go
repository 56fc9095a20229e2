// Command envprobe is a plugin for environment isolation tests: its Invoke
// method "getenv" returns the value of the environment variable named in the
// payload, and "environ" returns the names of every variable it was given,
// one per line.
package main

import (
	"context"
	"os"
	"sort"
	"strings"

	"github.com/plugincontrol/plugincontrol/plugin"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type envprobe struct{}

func (envprobe) Info() plugin.Info {
	return plugin.Info{Name: "envprobe", Version: "1.0.0", Methods: []string{"getenv", "environ"}}
}

func (envprobe) Ready(context.Context, []byte) error { return nil }

func (envprobe) Invoke(_ context.Context, method string, payload []byte) ([]byte, error) {
	switch method {
	case "getenv":
		return []byte(os.Getenv(string(payload))), nil
	case "environ":
		var names []string
		for _, kv := range os.Environ() {
			k, _, _ := strings.Cut(kv, "=")
			names = append(names, k)
		}
		sort.Strings(names)
		return []byte(strings.Join(names, "\n")), nil
	default:
		return nil, status.Errorf(codes.Unimplemented, "envprobe: unknown method %q (have getenv, environ)", method)
	}
}

func main() { plugin.Serve(envprobe{}) }
