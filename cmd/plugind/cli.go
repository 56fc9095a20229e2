//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/plugincontrol/plugincontrol/internal/version"
	"github.com/plugincontrol/plugincontrol/store"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1 // a runtime failure
	exitUsage   = 2 // bad flags or configuration
	exitDamaged = 3 // the store file is damaged: plugind store recover
)

// exitError ends plugind with code after printing msg (if any) on stderr.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// usageError is bad flags, arguments or configuration (exit 2).
func usageError(err error) error { return &exitError{code: exitUsage, msg: "plugind: " + err.Error()} }

// run runs plugind's command line and returns its exit code.
func run(args []string, stdout, stderr io.Writer) int {
	// A reload in place: the image before this one handed over on a
	// descriptor. Read first, whatever happens next (a refused handover
	// still hands over descriptors that must not leak into plugins).
	inh, inhErr := readInheritance()
	defer inh.close()
	// SIGHUP asks for a reload. Caught from here on (one that arrives while
	// this image starts is handled once it serves); an image started by a
	// reload ignored it until now (the previous image set SIG_IGN, which
	// the exec keeps), so a second "systemctl reload" never kills it.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	var cfg config
	serveCmd := func(cmd *cobra.Command, _ []string) error {
		if err := resolve(cmd.Flags(), &cfg, os.Environ()); err != nil {
			return usageError(err)
		}
		if cfg.checkConfig {
			if code := checkConfig(cfg, stdout, stderr); code != exitOK {
				return &exitError{code: code}
			}
			return nil
		}
		log, err := newLogger(cfg.logLevel, cfg.logFormat, stderr)
		if err != nil {
			return usageError(err)
		}
		if inhErr != nil {
			log.Error("the handover of the previous image could not be read: its plugins are relaunched", slog.String("error", inhErr.Error()))
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		if err := serve(ctx, cfg, log, inh, hup); err != nil {
			var de *store.DamagedError
			if errors.As(err, &de) {
				return &exitError{code: exitDamaged, msg: fmt.Sprintf("plugind: %v\n%s", err, recoverHint(cfg.stateDir))}
			}
			log.Error("plugind failed", slog.String("error", err.Error()))
			return &exitError{code: exitFailed}
		}
		return nil
	}
	root := &cobra.Command{
		Use:           "plugind",
		Short:         "the plugincontrol daemon",
		Long:          usage,
		Args:          noArgs,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE:          serveCmd,
	}
	// Every flag is every subcommand's: they all read one configuration
	// (plugind store check --config F checks the state directory F names).
	bindFlags(root.PersistentFlags(), &cfg)
	root.SetVersionTemplate("plugind {{.Version}}\n")
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetHelpTemplate(root.HelpTemplate() + moreHelp)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError(err) })
	root.AddCommand(
		&cobra.Command{Use: "serve", Short: "run the daemon (the default)", Args: noArgs, RunE: serveCmd},
		storeCmd(&cfg, stdout),
		&cobra.Command{Use: "version", Short: "print plugind's version", Args: noArgs, RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprintf(stdout, "plugind %s\n", version.String())
			return err
		}},
	)
	root.SetArgs(args)
	err := root.Execute()
	var ee *exitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee):
		if ee.msg != "" {
			fmt.Fprintln(stderr, ee.msg)
		}
		return ee.code
	default:
		// cobra's own: an unknown command or flag.
		fmt.Fprintf(stderr, "plugind: %v\n", err)
		return exitUsage
	}
}

// noArgs refuses positional arguments with a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError(fmt.Errorf("unexpected arguments %q (see %s --help)", args, cmd.CommandPath()))
	}
	return nil
}

// storeCmd is "plugind store check|recover": tools for the store file,
// run with plugind stopped, on the state directory of the configuration.
func storeCmd(cfg *config, stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "store",
		Short: "check or recover the store file (stop plugind first)",
		Args:  noArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	check := &cobra.Command{
		Use:   "check",
		Short: "check <state-dir>/plugind.db: bbolt's consistency check, every record, the audit chain (exit 0 ok, 3 damaged)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := resolve(cmd.Flags(), cfg, os.Environ()); err != nil {
				return usageError(err)
			}
			path := filepath.Join(cfg.stateDir, store.FileName)
			rep := store.Check(path)
			if rep.Problem != "" {
				return &exitError{code: exitDamaged, msg: fmt.Sprintf("plugind: store %s is damaged: %s\n%s", path, rep.Problem, recoverHint(cfg.stateDir))}
			}
			fmt.Fprintf(stdout, "store %s: schema %d, %d plugins, %d audit records\n", path, rep.SchemaVersion, rep.Plugins, rep.AuditRecords)
			for _, u := range rep.Unreadable {
				fmt.Fprintf(stdout, "unreadable plugin record (listed UNHEALTHY at start; unload it or load over it): %s\n", u)
			}
			if rep.ChainBroken != "" {
				fmt.Fprintf(stdout, "audit chain broken: %s\n", rep.ChainBroken)
			}
			if len(rep.Unreadable) > 0 || rep.ChainBroken != "" {
				return &exitError{code: exitFailed}
			}
			return nil
		},
	}
	var force bool
	recover := &cobra.Command{
		Use:   "recover",
		Short: "put the newest good snapshot of <state-dir>/snapshots in place of a damaged store (kept beside it as plugind.db.damaged-TIME)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := resolve(cmd.Flags(), cfg, os.Environ()); err != nil {
				return usageError(err)
			}
			sn, err := store.Recover(cfg.stateDir, force)
			switch {
			case errors.Is(err, store.ErrNotDamaged):
				return &exitError{code: exitUsage, msg: "plugind store recover: " + err.Error()}
			case err != nil:
				return &exitError{code: exitDamaged, msg: "plugind store recover: " + err.Error()}
			}
			fmt.Fprintf(stdout, "store %s recovered from snapshot %s (taken %s, after %d commits); changes recorded after it are lost\n",
				filepath.Join(cfg.stateDir, store.FileName), sn.Path, sn.ModTime.UTC().Format("2006-01-02 15:04:05Z"), sn.Commits)
			return nil
		},
	}
	recover.Flags().BoolVar(&force, "force", false, "replace the store with the newest snapshot even if it is not damaged")
	cmd.AddCommand(check, recover)
	return cmd
}
