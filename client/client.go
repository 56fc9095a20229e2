// Package client is the Go SDK for plugind, the plugincontrol daemon.
//
// Dial connects to a daemon (unix:// or tcp://, optionally with TLS and a
// bearer token). The Client has typed helpers for every RPC:
//
//	c, err := client.Dial(ctx, client.DefaultAddr())
//	if err != nil { ... }
//	defer c.Close()
//	st, err := c.Load(ctx, &plugincontrolv1.PluginSpec{Name: "echo", Binary: "echo"})
//	res, err := c.Reload(ctx, "echo", client.WithWaitHealthy(10*time.Second))
//	var ce *client.CandidateError
//	if errors.As(err, &ce) { ... ce.Stage, ce.StderrTail, ce.ActiveGeneration ... }
//
// Errors of the helpers are typed: they match the sentinels (ErrNotFound,
// ErrAlreadyExists, ErrGenerationMismatch, ErrUnavailable, ...) with
// errors.Is, carry their details in *CandidateError, *PanicError and
// *InvalidArgumentError (errors.As), and still work with status.Code.
//
// Watch follows the health stream: it delivers events on a channel or to a
// callback, keeps a View that converges to the daemon's state, and
// reconnects with backoff, resuming from the last revision it saw.
//
// Control and Gateway give the generated gRPC clients for anything the
// helpers do not cover.
package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/retry"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// Client is a connection to one plugind. It is safe for concurrent use.
// Create it with Dial and release it with Close.
type Client struct {
	opts    []Option // as given to Dial, for DialPlugin
	conn    *grpc.ClientConn
	control plugincontrolv1.PluginControlServiceClient
	gateway plugincontrolv1.PluginGatewayServiceClient
	fleet   plugincontrolv1.FleetServiceClient
}

type options struct {
	tls   *tls.Config
	token string
	// tokenSet records that WithToken was used, so that an empty token is
	// reported instead of silently ignored.
	tokenSet bool
	extra    []grpc.DialOption
}

// Keepalive parameters of the client: ping after 30s without activity on a
// connection with active RPCs (long WatchHealth streams) and give up on the
// connection when the ping is not answered within 10s. plugind accepts
// pings every 5s at most; a client of another language that pings more
// often is disconnected (GOAWAY too_many_pings).
const (
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 10 * time.Second
)

// Retry of unary calls: only the idempotent reads ListPlugins and Health
// are retried, only on codes.Unavailable (the daemon is restarting or not
// up yet, or a connection broke), up to retryAttempts attempts in all with
// exponential backoff (50ms, 100ms, 200ms, 400ms between them, each ±20%:
// 750ms in all; go-grpc-middleware's BackoffExponentialWithJitter), within
// the caller's deadline. The connection's own reconnect backoff starts at
// reconnectBaseDelay (grpc-go's default, 1s, would make every retry inside
// that window fail fast while the daemon restarts).
//
// Load, Reload, Unload and Invoke are never retried: an Unavailable from
// them does not prove that nothing happened (the daemon may have launched
// the candidate, swapped generations or run the plugin method before the
// connection broke), and repeating them is not safe: a repeated Load fails
// with AlreadyExists, a repeated Reload makes one generation more, and a
// plugin method may have side effects. Callers that know better can retry
// themselves (a Reload with WithExpectedGeneration is safe to repeat).
// grpc-go's own transparent retry still applies to calls that never left
// the client.
const (
	retryAttempts      = 5
	retryBackoff       = 50 * time.Millisecond
	reconnectBaseDelay = 100 * time.Millisecond
	reconnectMaxDelay  = 5 * time.Second
)

var retriedMethods = map[string]bool{
	plugincontrolv1.PluginControlService_ListPlugins_FullMethodName: true,
	plugincontrolv1.PluginControlService_Health_FullMethodName:      true,
}

// retryReads retries the idempotent reads with go-grpc-middleware's retry
// interceptor and passes every other call straight through.
func retryReads() grpc.UnaryClientInterceptor {
	r := retry.UnaryClientInterceptor(
		retry.WithMax(retryAttempts),
		retry.WithCodes(codes.Unavailable),
		retry.WithBackoff(retry.BackoffExponentialWithJitter(retryBackoff, 0.2)),
	)
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if !retriedMethods[method] {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		return r(ctx, method, req, reply, cc, invoker, opts...)
	}
}

// Dial returns a Client for the daemon at addr. Accepted addresses:
//
//	unix:///abs/path/plugind.sock   unix socket, absolute path
//	unix:/abs/path/plugind.sock     the same
//	unix:relative/plugind.sock      unix socket, relative to the working directory
//	unix://relative/plugind.sock    the same (the "//" is optional)
//	tcp://host:port                 TCP (plaintext unless WithTLS is given)
//
// Dial does not wait for the daemon: it checks addr and the options and
// returns at once; the connection is made by the first RPC, and a daemon
// that cannot be reached makes RPCs fail with codes.Unavailable. ctx is only
// checked for cancellation.
func Dial(ctx context.Context, addr string, opts ...Option) (*Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	conn, err := newConn(addr, opts)
	if err != nil {
		return nil, err
	}
	return &Client{
		opts:    opts,
		conn:    conn,
		control: plugincontrolv1.NewPluginControlServiceClient(conn),
		gateway: plugincontrolv1.NewPluginGatewayServiceClient(conn),
		fleet:   plugincontrolv1.NewFleetServiceClient(conn),
	}, nil
}

// newConn makes the connection of Dial and DialEndpoint.
func newConn(addr string, opts []Option, more ...grpc.DialOption) (*grpc.ClientConn, error) {
	var o options
	for _, opt := range opts {
		opt.applyDial(&o)
	}
	ep, err := parseAddr(addr)
	if err != nil {
		return nil, err
	}

	dopts := []grpc.DialOption{
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                keepaliveTime,
			Timeout:             keepaliveTimeout,
			PermitWithoutStream: false,
		}),
		grpc.WithChainUnaryInterceptor(retryReads()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{BaseDelay: reconnectBaseDelay, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMaxDelay},
			// A local daemon answers at once; 5s still covers a busy host.
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	if o.tls != nil {
		dopts = append(dopts, grpc.WithTransportCredentials(credentials.NewTLS(o.tls)))
	} else {
		dopts = append(dopts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if o.tokenSet {
		if err := checkToken(o.token); err != nil {
			return nil, err
		}
		secure := o.tls != nil
		if !secure && ep.network == "tcp" && !isLoopback(ep.host) {
			return nil, fmt.Errorf("client: refusing to send a bearer token in clear text to %s: use TLS (WithTLS) or a unix socket", addr)
		}
		dopts = append(dopts, grpc.WithPerRPCCredentials(bearerToken{token: o.token, secure: secure}))
	}

	dopts = append(append(dopts, more...), o.extra...)
	conn, err := grpc.NewClient(ep.target, dopts...)
	if err != nil {
		return nil, fmt.Errorf("client: %s: %w", addr, err)
	}
	return conn, nil
}

// Control returns the client of the control API (Load, Reload, Unload,
// ListPlugins, Health, WatchHealth).
func (c *Client) Control() plugincontrolv1.PluginControlServiceClient { return c.control }

// Gateway returns the client of the data path (Invoke).
func (c *Client) Gateway() plugincontrolv1.PluginGatewayServiceClient { return c.gateway }

// Fleet returns the raw FleetService stub: the fleet's nodes, desired
// plugins and their reports (a plugind started with --fleet-etcd; others
// answer FailedPrecondition). Errors are not wrapped.
func (c *Client) Fleet() plugincontrolv1.FleetServiceClient { return c.fleet }

// Close closes the connection; RPCs in flight fail with codes.Canceled.
func (c *Client) Close() error { return c.conn.Close() }

// endpoint is a parsed address.
type endpoint struct {
	network string // "unix" or "tcp"
	path    string // unix socket path
	host    string // tcp host
	target  string // grpc.NewClient target
}

const addrForms = "unix:///abs/path, unix:relative/path or tcp://host:port"

// parseAddr turns a daemon address into a gRPC target.
func parseAddr(addr string) (endpoint, error) {
	bad := func(why string) (endpoint, error) {
		return endpoint{}, fmt.Errorf("client: bad address %q: %s (accepted forms: %s)", addr, why, addrForms)
	}
	switch {
	case strings.HasPrefix(addr, "unix:"):
		p := strings.TrimPrefix(strings.TrimPrefix(addr, "unix:"), "//")
		if p == "" {
			return bad("empty socket path")
		}
		if strings.ContainsAny(p, "?#") {
			return bad("socket path must not contain '?' or '#'")
		}
		ep := endpoint{network: "unix", path: p}
		if filepath.IsAbs(p) {
			// unix:///abs/path: grpc-go takes the path from the URL path.
			ep.target = (&url.URL{Scheme: "unix", Path: p}).String()
		} else {
			// unix:rel/path: grpc-go takes the path from the opaque part,
			// relative to the working directory at connect time.
			ep.target = "unix:" + p
		}
		return ep, nil
	case strings.HasPrefix(addr, "tcp://"):
		hp := strings.TrimPrefix(addr, "tcp://")
		host, port, err := net.SplitHostPort(hp)
		if err != nil {
			return bad("want tcp://host:port")
		}
		if host == "" {
			return bad("empty host")
		}
		if port == "" {
			return bad("empty port")
		}
		if strings.ContainsAny(hp, "/?#") {
			return bad("want tcp://host:port with nothing after the port")
		}
		return endpoint{network: "tcp", host: host, target: "dns:///" + hp}, nil
	case addr == "":
		return bad("empty address")
	default:
		return bad("unknown scheme")
	}
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func checkToken(token string) error {
	if token == "" {
		return errors.New("client: empty bearer token")
	}
	for _, r := range token {
		if r < 0x20 || r == 0x7f {
			return errors.New("client: bearer token contains control characters")
		}
	}
	return nil
}

// bearerToken is per-RPC credentials sending a bearer token.
type bearerToken struct {
	token  string
	secure bool
}

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity is false for plaintext unix sockets (and loopback
// TCP, checked by Dial) so that grpc-go lets the token through.
func (b bearerToken) RequireTransportSecurity() bool { return b.secure }

// DefaultStateDir is the daemon's default state directory:
// $XDG_STATE_HOME/plugind when XDG_STATE_HOME is set to an absolute path,
// otherwise $HOME/.local/state/plugind (the home directory is taken from the
// user database when HOME is unset).
func DefaultStateDir() string {
	if x := os.Getenv("XDG_STATE_HOME"); x != "" && filepath.IsAbs(x) {
		return filepath.Join(x, "plugind")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		if u, uerr := user.Current(); uerr == nil && u.HomeDir != "" {
			home = u.HomeDir
		}
	}
	return filepath.Join(home, ".local", "state", "plugind")
}

// DefaultAddr is the address clients use when none is given: $PLUGIND_ADDR
// when set, otherwise the unix socket plugind.sock in DefaultStateDir.
func DefaultAddr() string {
	if a := os.Getenv("PLUGIND_ADDR"); a != "" {
		return a
	}
	return "unix://" + filepath.Join(DefaultStateDir(), "plugind.sock")
}
