package endpoint_test

import (
	"testing"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// pluginDir holds the example plugins and go-plugin's KV example, built once.
var pluginDir string

func TestMain(m *testing.M) { testbin.Main(m, &pluginDir, testbin.Plugins) }
