package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const (
	viewerTok   = "viewer-token-0123456789"
	operatorTok = "operator-token-0123456789"
	invokerTok  = "invoker-token-0123456789"
)

func authConfig() *server.AuthConfig {
	return &server.AuthConfig{
		Tokens: []server.TokenIdentity{
			{Name: "dash", Token: viewerTok, Roles: []string{server.RoleViewer}},
			{Name: "ci", Token: operatorTok, Roles: []string{server.RoleOperator}},
			{Name: "svc", Token: invokerTok, Roles: []string{server.RoleInvoker}},
		},
		Certs: []server.CertIdentity{{CommonName: "deployer", Roles: []string{server.RoleOperator}}},
		Open:  []string{"health"},
	}
}

func withToken(ctx context.Context, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
}

func TestTokensAndRoles(t *testing.T) {
	f := start(t, server.WithAuth(authConfig()))
	ctx := context.Background()
	spec := &pb.PluginSpec{Name: "echo", Binary: "echo"}

	if _, err := f.ctl.ListPlugins(ctx, &pb.ListPluginsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token: %v", err)
	}
	if _, err := f.ctl.ListPlugins(withToken(ctx, "wrong-token-0123456789"), &pb.ListPluginsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("wrong token: %v", err)
	}
	if _, err := f.ctl.Load(withToken(ctx, viewerTok), &pb.LoadRequest{Spec: spec}); status.Code(err) != codes.PermissionDenied ||
		!strings.Contains(err.Error(), "needs role operator") {
		t.Fatalf("viewer Load: %v", err)
	}
	if _, err := f.ctl.Load(withToken(ctx, invokerTok), &pb.LoadRequest{Spec: spec}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("invoker Load: %v", err)
	}
	if _, err := f.ctl.Load(withToken(ctx, operatorTok), &pb.LoadRequest{Spec: spec}); err != nil {
		t.Fatalf("operator Load: %v", err)
	}
	if _, err := f.ctl.ListPlugins(withToken(ctx, viewerTok), &pb.ListPluginsRequest{}); err != nil {
		t.Fatalf("viewer List: %v", err)
	}
	if _, err := f.ctl.ListPlugins(withToken(ctx, operatorTok), &pb.ListPluginsRequest{}); err != nil {
		t.Fatalf("operator List (operator includes viewer): %v", err)
	}
	if _, err := f.gw.Invoke(withToken(ctx, operatorTok), &pb.InvokeRequest{Plugin: "echo", Method: "echo"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("operator Invoke: %v", err)
	}
	if _, err := f.gw.Invoke(withToken(ctx, invokerTok), &pb.InvokeRequest{Plugin: "echo", Method: "echo"}); err != nil {
		t.Fatalf("invoker Invoke: %v", err)
	}
	// Fleet specs run on every selected node: only operators write them;
	// viewers read. (This server has no fleet: a call that passes
	// authorization gets FailedPrecondition.)
	fleet := pb.NewFleetServiceClient(f.conn)
	if _, err := fleet.ApplyFleetPlugin(withToken(ctx, viewerTok), &pb.ApplyFleetPluginRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("viewer ApplyFleetPlugin: %v", err)
	}
	if _, err := fleet.StartRollout(withToken(ctx, invokerTok), &pb.StartRolloutRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("invoker StartRollout: %v", err)
	}
	if _, err := fleet.ApplyFleetPlugin(withToken(ctx, operatorTok), &pb.ApplyFleetPluginRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("operator ApplyFleetPlugin: %v", err)
	}
	if _, err := fleet.ListNodes(withToken(ctx, viewerTok), &pb.ListNodesRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("viewer ListNodes: %v", err)
	}
	// A stream needs credentials too.
	st, err := f.ctl.WatchHealth(ctx, &pb.WatchHealthRequest{})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("WatchHealth without token: %v", err)
	}
	// Health is open by configuration; reflection is not.
	if _, err := f.health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("open health: %v", err)
	}
	// The audit log names the token, never the token itself.
	audit, err := f.ctl.ListAudit(withToken(ctx, viewerTok), &pb.ListAuditRequest{})
	if err != nil || len(audit.GetRecords()) != 1 || audit.GetRecords()[0].GetCaller() != "token:ci" || audit.GetRecords()[0].GetAction() != "load" {
		t.Fatalf("audit: %v %v", audit, err)
	}
	if strings.Contains(audit.String(), operatorTok) {
		t.Fatalf("the token leaked into the audit record")
	}
}

func TestAuthFileChecks(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "auth.yaml")
	good := "tokens:\n  - name: ci\n    token: operator-token-0123456789\n    roles: [operator]\nopen: [health]\n"
	if err := os.WriteFile(p, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := server.LoadAuthFile(p); err == nil || !strings.Contains(err.Error(), "readable by group or others") {
		t.Fatalf("world-readable auth file accepted: %v", err)
	}
	os.Chmod(p, 0o600)
	if c, err := server.LoadAuthFile(p); err != nil || len(c.Tokens) != 1 {
		t.Fatalf("good auth file: %v", err)
	}
	for _, bad := range []string{
		"tokens:\n  - name: ci\n    token: short\n    roles: [operator]\n",
		"tokens:\n  - name: ci\n    token: operator-token-0123456789\n    roles: [root]\n",
		"tokens:\n  - name: ci\n    token: operator-token-0123456789\n    roles: [operator]\n    extra: 1\n",
		"open: [everything]\n",
	} {
		os.WriteFile(p, []byte(bad), 0o600)
		if _, err := server.LoadAuthFile(p); err == nil {
			t.Errorf("bad auth file accepted:\n%s", bad)
		}
	}
}

// pki is a throwaway CA with a server and two client certificates.
type pki struct {
	pool                     *x509.CertPool
	server, client, stranger tls.Certificate
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage) tls.Certificate {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
	}
	p := &pki{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.server = leaf(2, "plugind", x509.ExtKeyUsageServerAuth)
	p.client = leaf(3, "deployer", x509.ExtKeyUsageClientAuth)
	p.stranger = leaf(4, "stranger", x509.ExtKeyUsageClientAuth)
	return p
}

func TestMutualTLSMapsCertificatesToRoles(t *testing.T) {
	p := newPKI(t)
	m, err := manager.New(manager.Config{PluginDir: pluginDir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(m, server.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))), server.WithAuth(authConfig()),
		server.WithTLS(&tls.Config{Certificates: []tls.Certificate{p.server}, ClientCAs: p.pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
		_ = m.Close(ctx)
	})
	dial := func(cert *tls.Certificate) pb.PluginControlServiceClient {
		cfg := &tls.Config{RootCAs: p.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return pb.NewPluginControlServiceClient(conn)
	}
	ctx := context.Background()
	if _, err := dial(&p.client).Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "echo", Binary: "echo"}}); err != nil {
		t.Fatalf("deployer certificate (operator): %v", err)
	}
	if _, err := dial(&p.stranger).ListPlugins(ctx, &pb.ListPluginsRequest{}); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "not mapped") {
		t.Fatalf("unmapped certificate: %v", err)
	}
	if _, err := dial(nil).ListPlugins(ctx, &pb.ListPluginsRequest{}); err == nil {
		t.Fatalf("no client certificate accepted")
	}
	// Plaintext to the TLS port fails.
	conn, _ := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	if _, err := pb.NewPluginControlServiceClient(conn).ListPlugins(ctx, &pb.ListPluginsRequest{}); err == nil {
		t.Fatalf("plaintext accepted on the TLS listener")
	}
	page, _ := m.Audit("", 0, 10)
	audit := page.Records
	if len(audit) != 1 || audit[0].Caller != "cert:deployer" {
		t.Fatalf("audit caller: %+v", audit)
	}
}

func TestUnixCallerIsNamedByUID(t *testing.T) {
	f := start(t)
	if _, err := f.ctl.Load(context.Background(), &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "echo", Binary: "echo"}}); err != nil {
		t.Fatal(err)
	}
	page, _ := f.m.Audit("", 0, 10)
	audit := page.Records
	if len(audit) != 1 || audit[0].Caller != "uid:"+strconv.Itoa(os.Getuid()) {
		t.Fatalf("audit caller: %+v", audit)
	}
}

// TestPanicStackForOperatorsOnly: a plugin's panic reaches every invoker
// with its message and fingerprint, and its stack (source paths of the
// plugin's build) only when the caller also holds the operator role, or
// when the daemon allows it for everyone.
func TestPanicStackForOperatorsOnly(t *testing.T) {
	const bothTok = "operator-and-invoker-0123456789"
	cfg := authConfig()
	cfg.Tokens = append(cfg.Tokens, server.TokenIdentity{Name: "sre", Token: bothTok, Roles: []string{server.RoleOperator, server.RoleInvoker}})
	f := start(t, server.WithAuth(cfg))
	ctx := context.Background()
	if _, err := f.ctl.Load(withToken(ctx, operatorTok), &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "echo", Binary: "echo"}}); err != nil {
		t.Fatal(err)
	}
	panicOf := func(f *fixture, ctx context.Context) *pluginv1.PanicDetail {
		t.Helper()
		_, err := f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "echo", Method: "panic", Payload: []byte("boom")})
		pd := detail[*pluginv1.PanicDetail](status.Convert(err))
		if status.Code(err) != codes.Internal || pd.GetMessage() != "boom" || pd.GetFingerprint() == "" {
			t.Fatalf("panic: %v %v", err, pd)
		}
		return pd
	}
	if pd := panicOf(f, withToken(ctx, invokerTok)); pd.GetStack() != "" {
		t.Errorf("an invoker without the operator role got the stack")
	}
	if pd := panicOf(f, withToken(ctx, bothTok)); !strings.Contains(pd.GetStack(), "goroutine") {
		t.Errorf("an operator got no stack: %q", pd.GetStack())
	}
	open := start(t, server.WithPanicStacks(true))
	open.load(t, "echo", "echo")
	if pd := panicOf(open, ctx); !strings.Contains(pd.GetStack(), "goroutine") {
		t.Errorf("WithPanicStacks: no stack")
	}
	plain := start(t)
	plain.load(t, "echo", "echo")
	if pd := panicOf(plain, ctx); pd.GetStack() != "" {
		t.Errorf("no auth, no WithPanicStacks: the stack was sent")
	}
}
