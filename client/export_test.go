package client

// StartExampleDaemon starts an in-process plugind (real manager, real
// server, real plugin processes) on a fresh unix socket for the examples
// and returns its address and a function that stops it.
func StartExampleDaemon() (addr string, stop func()) {
	d, err := startDaemon(daemonConfig{})
	if err != nil {
		panic(err)
	}
	return d.addr(), func() {
		d.stop()
		d.remove()
	}
}
