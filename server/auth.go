package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/yaml"
)

// Roles a token or certificate can hold.
const (
	// RoleViewer may call ListPlugins, Health, WatchHealth and ListAudit.
	RoleViewer = "viewer"
	// RoleOperator may do what a viewer may, and Load, Reload and Unload.
	RoleOperator = "operator"
	// RoleInvoker may call PluginGatewayService.Invoke and lease plugins
	// for direct connections (PluginDirectService).
	RoleInvoker = "invoker"
)

// AuthConfig says who may call what. It is read from a file (LoadAuthFile),
// never from the command line.
type AuthConfig struct {
	// Tokens are bearer tokens ("authorization: Bearer TOKEN").
	Tokens []TokenIdentity `json:"tokens"`
	// Certs map verified client certificates (mTLS) to roles by subject
	// common name.
	Certs []CertIdentity `json:"certs"`
	// Open lists services callable without credentials: "health"
	// (grpc.health.v1, for probes) and/or "reflection".
	Open []string `json:"open"`
}

// TokenIdentity is one bearer token.
type TokenIdentity struct {
	// Name identifies the caller in the audit log ("token:NAME"); never
	// the token itself.
	Name  string   `json:"name"`
	Token string   `json:"token"`
	Roles []string `json:"roles"`
}

// CertIdentity maps a client certificate's subject common name to roles.
type CertIdentity struct {
	CommonName string   `json:"common_name"`
	Roles      []string `json:"roles"`
}

// LoadAuthFile reads an AuthConfig from a YAML (or JSON) file. The file must
// not be readable by group or others, since it holds secrets.
func LoadAuthFile(path string) (*AuthConfig, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("auth file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("auth file %s is readable by group or others (mode %s); chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth file: %w", err)
	}
	var cfg AuthConfig
	if err := yaml.UnmarshalStrict(b, &cfg); err != nil {
		return nil, fmt.Errorf("auth file %s: %w", path, err)
	}
	return &cfg, cfg.validate()
}

func (c *AuthConfig) validate() error {
	valid := []string{RoleViewer, RoleOperator, RoleInvoker}
	names := map[string]bool{}
	for i, t := range c.Tokens {
		if t.Name == "" || names[t.Name] {
			return fmt.Errorf("auth file: tokens[%d]: name must be set and unique", i)
		}
		names[t.Name] = true
		if len(t.Token) < 16 {
			return fmt.Errorf("auth file: token %q: at least 16 characters", t.Name)
		}
		if len(t.Roles) == 0 {
			return fmt.Errorf("auth file: token %q: no roles", t.Name)
		}
		for _, r := range t.Roles {
			if !slices.Contains(valid, r) {
				return fmt.Errorf("auth file: token %q: unknown role %q (want viewer, operator or invoker)", t.Name, r)
			}
		}
	}
	for i, ci := range c.Certs {
		if ci.CommonName == "" || len(ci.Roles) == 0 {
			return fmt.Errorf("auth file: certs[%d]: common_name and roles are required", i)
		}
		for _, r := range ci.Roles {
			if !slices.Contains(valid, r) {
				return fmt.Errorf("auth file: cert %q: unknown role %q", ci.CommonName, r)
			}
		}
	}
	for _, o := range c.Open {
		if o != "health" && o != "reflection" {
			return fmt.Errorf("auth file: open: unknown service %q (want health or reflection)", o)
		}
	}
	return nil
}

// authorizer authenticates callers and checks their roles per method.
type authorizer struct {
	tokens []tokenDigest
	certs  map[string][]string
	open   map[string]bool
}

type tokenDigest struct {
	name   string
	digest [sha256.Size]byte
	roles  []string
}

func newAuthorizer(c *AuthConfig) *authorizer {
	a := &authorizer{certs: map[string][]string{}, open: map[string]bool{}}
	for _, t := range c.Tokens {
		a.tokens = append(a.tokens, tokenDigest{name: t.Name, digest: sha256.Sum256([]byte(t.Token)), roles: t.Roles})
	}
	for _, ci := range c.Certs {
		a.certs[ci.CommonName] = ci.Roles
	}
	for _, o := range c.Open {
		a.open[o] = true
	}
	return a
}

// requiredRole returns the role a method needs; "" means the service is
// open (no credentials).
func (a *authorizer) requiredRole(method string) string {
	switch {
	case strings.HasPrefix(method, "/grpc.health.v1.Health/"):
		if a.open["health"] {
			return ""
		}
		return RoleViewer
	case strings.HasPrefix(method, "/grpc.reflection."):
		if a.open["reflection"] {
			return ""
		}
		return RoleViewer
	case method == "/plugincontrol.v1.PluginGatewayService/Invoke",
		strings.HasPrefix(method, "/plugincontrol.v1.PluginDirectService/"):
		return RoleInvoker
	case strings.HasPrefix(method, "/plugincontrol.v1.PluginControlService/"):
		switch strings.TrimPrefix(method, "/plugincontrol.v1.PluginControlService/") {
		case "Load", "Reload", "Unload":
			return RoleOperator
		default:
			return RoleViewer
		}
	case strings.HasPrefix(method, "/plugincontrol.v1.FleetService/"):
		// Fleet specs run on every selected node: only operators write them.
		switch strings.TrimPrefix(method, "/plugincontrol.v1.FleetService/") {
		case "ListNodes", "FleetStatus", "GetRollout", "WatchFleet":
			return RoleViewer
		default:
			return RoleOperator
		}
	}
	return RoleOperator
}

func allows(roles []string, need string) bool {
	for _, r := range roles {
		if r == need || (r == RoleOperator && need == RoleViewer) {
			return true
		}
	}
	return false
}

// authenticate is the go-grpc-middleware AuthFunc: it identifies the
// caller (bearer token, else a verified client certificate), checks the
// role the method needs, and names the caller in the context for the audit
// log. Tokens are compared as SHA-256 digests in constant time, against
// every configured token, and never logged.
func (a *authorizer) authenticate(ctx context.Context) (context.Context, error) {
	method, _ := grpc.Method(ctx)
	return a.check(ctx, method, a.requiredRole(method))
}

// check authenticates the caller of method and checks that it holds role
// need ("": the method is open).
func (a *authorizer) check(ctx context.Context, method, need string) (context.Context, error) {
	if need == "" {
		return manager.WithCaller(ctx, peerIdentity(ctx)), nil
	}
	id, roles := "", []string(nil)
	if tok, err := auth.AuthFromMD(ctx, "bearer"); err == nil {
		d := sha256.Sum256([]byte(tok))
		for _, t := range a.tokens {
			if subtle.ConstantTimeCompare(d[:], t.digest[:]) == 1 {
				id, roles = "token:"+t.name, t.roles
			}
		}
		if id == "" {
			return nil, status.Error(codes.Unauthenticated, "unknown bearer token")
		}
	} else if cn := clientCertCN(ctx); cn != "" {
		r, ok := a.certs[cn]
		if !ok {
			return nil, status.Errorf(codes.Unauthenticated, "client certificate %q is not mapped to a role", cn)
		}
		id, roles = "cert:"+cn, r
	} else {
		return nil, status.Error(codes.Unauthenticated, "missing credentials: send \"authorization: Bearer <token>\" or a client certificate")
	}
	if !allows(roles, need) {
		return nil, status.Errorf(codes.PermissionDenied, "%s (roles %s) may not call %s: it needs role %s", id, strings.Join(roles, ","), method, need)
	}
	return context.WithValue(manager.WithCaller(ctx, id), rolesKey{}, roles), nil
}

// rolesKey carries an authenticated caller's roles in a context.
type rolesKey struct{}

// hasRole reports whether the caller of ctx was authenticated with role.
func hasRole(ctx context.Context, role string) bool {
	roles, _ := ctx.Value(rolesKey{}).([]string)
	return slices.Contains(roles, role)
}

// clientCertCN returns the common name of a verified client certificate.
func clientCertCN(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return ""
	}
	return ti.State.VerifiedChains[0][0].Subject.CommonName
}

// identify is the AuthFunc used when no auth is configured (the unix
// socket's file mode is the protection): it only names the caller.
func identify(ctx context.Context) (context.Context, error) {
	return manager.WithCaller(ctx, peerIdentity(ctx)), nil
}
