//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/plugincontrol/plugincontrol/fleet"
	"github.com/plugincontrol/plugincontrol/internal/proc"
	"github.com/plugincontrol/plugincontrol/internal/version"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/metrics"
)

// fleetMember is this plugind's part in a fleet (--fleet-etcd): the etcd
// client, the store FleetService serves and the agent.
type fleetMember struct {
	node       string
	cli        *clientv3.Client
	store      *fleet.Store
	agent      *fleet.Agent
	controller *fleet.Controller
	done       chan struct{} // closed when the agent's and the controller's Run returned
	stop       context.CancelFunc
}

// joinFleet connects to etcd (lazily: an unreachable etcd does not stop
// plugind from starting) and prepares the agent; nil without --fleet-etcd.
//
// lease, when not 0, is the node lease of the image this one replaced (a
// reload), granted to node: the agent keeps it.
func joinFleet(cfg config, m *manager.Manager, log *slog.Logger, lease int64, leaseNode string) (*fleetMember, error) {
	if cfg.fleetEtcd == "" {
		return nil, nil
	}
	var tlsCfg *tls.Config
	if cfg.fleetCA != "" || cfg.fleetCert != "" {
		info := transport.TLSInfo{TrustedCAFile: cfg.fleetCA, CertFile: cfg.fleetCert, KeyFile: cfg.fleetKey}
		var err error
		if tlsCfg, err = info.ClientConfig(); err != nil {
			return nil, fmt.Errorf("--fleet-etcd TLS: %w", err)
		}
	}
	var password string
	if cfg.fleetPasswordFile != "" {
		var err error
		if password, err = readPassword(cfg.fleetPasswordFile); err != nil {
			return nil, err
		}
	}
	if plain := plaintextRemote(cfg.fleetEtcd); len(plain) > 0 && tlsCfg == nil {
		log.Warn("the fleet's etcd is reached in plaintext across the network: anyone on the path reads and rewrites the fleet (use https:// endpoints with --fleet-etcd-ca)",
			slog.String("endpoints", strings.Join(plain, ",")))
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(cfg.fleetEtcd, ","),
		DialTimeout: 5 * time.Second,
		TLS:         tlsCfg,
		Username:    cfg.fleetUser,
		Password:    password,
		Logger:      zap.NewNop(), // the agent logs what matters through slog
		// Keepalive on the etcd connection: a partitioned etcd is noticed
		// within about 10s, not at the next TCP timeout.
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		// Reconnect within 2s of etcd coming back (grpc-go's default
		// backoff grows to 120s).
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 2 * time.Second,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("--fleet-etcd: %w", err)
	}
	node := cfg.nodeName
	if node == "" {
		if node, err = os.Hostname(); err != nil {
			cli.Close()
			return nil, fmt.Errorf("--node-name not given and no host name: %w", err)
		}
	}
	labels, _ := cfg.labels() // checked by config.check
	v, _ := version.Get()
	if leaseNode != node {
		lease = 0 // another node name: a new lease
	}
	id, err := stateID(cfg.stateDir)
	if err != nil {
		cli.Close()
		return nil, err
	}
	agent, err := fleet.NewAgent(fleet.AgentConfig{
		Client: cli, Prefix: cfg.fleetPrefix, Node: node, Labels: labels, Version: v,
		Manager: m, Logger: log, LeaseTTL: cfg.fleetLeaseTTL, InheritLease: lease, AdoptLocal: cfg.fleetAdoptLocal,
		Memory: filepath.Join(cfg.stateDir, "fleet-etcd.json"),
		// The state directory's id tells this plugind from a twin with a
		// copy of its configuration; the boot id from a clone of the
		// whole machine, state directory included.
		Instance: id + "@" + proc.BootID(),
	})
	if err != nil {
		cli.Close()
		return nil, err
	}
	var ctrl *fleet.Controller
	if cfg.fleetController {
		ctrl = fleet.NewController(fleet.ControllerConfig{Client: cli, Prefix: cfg.fleetPrefix, Node: node, Logger: log, LeaseTTL: cfg.fleetLeaseTTL, NodeRetention: cfg.fleetNodeRetention})
	}
	return &fleetMember{node: node, cli: cli, store: fleet.NewStore(cli, cfg.fleetPrefix), agent: agent, controller: ctrl, done: make(chan struct{})}, nil
}

// start runs the agent and, unless --fleet-controller=false, the
// controller (which campaigns to lead the fleet's rollouts) until close.
func (f *fleetMember) start(ctx context.Context) {
	ctx, f.stop = context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = f.agent.Run(ctx) }()
	if f.controller != nil {
		wg.Add(1)
		go func() { defer wg.Done(); _ = f.controller.Run(ctx) }()
	}
	go func() { wg.Wait(); close(f.done) }()
}

// stats is what the fleet metrics show of this node (metrics.AttachFleet).
func (f *fleetMember) stats() metrics.FleetStats {
	s := metrics.FleetStats{Fenced: f.agent.Fenced()}
	if f.controller != nil {
		cs := f.controller.Stats()
		s.Leading, s.Rollouts, s.StepErrors, s.LastStepError = cs.Leading, cs.Rollouts, cs.StepErrors, cs.LastStepError
	}
	return s
}

// readPassword reads the first line of the etcd password file. A file
// others may read is refused: it holds a credential of the whole fleet.
func readPassword(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("--fleet-etcd-password-file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("--fleet-etcd-password-file %s: mode %v lets others read the fleet's password (chmod 600 it)", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--fleet-etcd-password-file: %w", err)
	}
	pw, _, _ := strings.Cut(string(b), "\n")
	pw = strings.TrimSuffix(pw, "\r")
	if pw == "" {
		return "", fmt.Errorf("--fleet-etcd-password-file %s: empty (the password is its first line)", path)
	}
	return pw, nil
}

// close stops the agent (revoking the node's lease) and the etcd client.
func (f *fleetMember) close() {
	if f.stop != nil {
		f.stop()
		<-f.done
	}
	f.cli.Close()
}

// handover stops the agent and the controller for a reload in place,
// keeping the node's lease (the next image's agent takes it over), and
// returns the lease (0: none).
func (f *fleetMember) handover() int64 {
	f.agent.Handover()
	if f.stop != nil {
		f.stop()
		<-f.done
		f.stop = nil
	}
	return f.agent.Lease()
}

// stateID returns the id of the state directory (<state-dir>/instance-id,
// random, made on first use).
func stateID(stateDir string) (string, error) {
	path := filepath.Join(stateDir, "instance-id")
	if b, err := os.ReadFile(path); err == nil && len(bytes.TrimSpace(b)) > 0 {
		return string(bytes.TrimSpace(b)), nil
	}
	var r [16]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	id := hex.EncodeToString(r[:])
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("the state directory's instance id: %w", err)
	}
	return id, nil
}
