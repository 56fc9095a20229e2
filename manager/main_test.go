package manager_test

import (
	"testing"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// pluginDir holds the example plugins, built once for the package.
var pluginDir string

func TestMain(m *testing.M) { testbin.Main(m, &pluginDir, testbin.Plugins) }
