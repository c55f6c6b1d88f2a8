// Command hepto-tools is the multi-call binary of the client tools hepto runs
// now and then beside the programs of hepto-bundle: kubectl, etcdctl, etcdutl
// and containerd's ctr, each the body of its upstream main() with the same blank
// imports, from the same pinned module set (../go.mod). etcdutl's root command
// lives in its package main, which cannot be imported: runEtcdutl repeats its
// few lines (etcdutl/ctl.go of v3.7.0) around the importable subcommands.
//
// They are not in hepto-bundle because every process of a multi-call binary
// runs the package initialisers of every program linked into it: kubectl's
// alone allocate several MiB (k8s.io/kubectl/pkg/cmd/options: 4.4 MB), which
// each long-running component of a node would hold for nothing. Dispatch is
// hepto-bundle's (../internal/multicall): the symlinks kubectl, etcdctl and
// etcdutl and ctr, or `hepto-tools kubectl ...`; `hepto-bundle kubectl ...` execs this
// binary. See docs/bundle.rst and docs/memory.rst.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"

	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl auth plugins

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/etcdctl/v3/ctlv3"
	"go.etcd.io/etcd/etcdutl/v3/etcdutl"
	"go.etcd.io/etcd/pkg/v3/cobrautl"

	ctr "github.com/containerd/containerd/v2/cmd/ctr/app"

	"hepto/bundle/internal/multicall"
)

var tools = multicall.Binary{
	Name: "hepto-tools",
	Programs: map[string]func(){
		"kubectl": runKubectl,
		"etcdctl": runEtcdctl,
		"etcdutl": runEtcdutl,
		"ctr":     runCtr,
	},
}

func main() { tools.Main() }

func runKubectl() {
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := kubectlcmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
	}
}

func runEtcdctl() { ctlv3.MustStart() }

// runEtcdutl is etcdutl's main (etcdutl/main.go and ctl.go, v3.7.0): the
// offline tool that restores a snapshot into a data directory
// (`etcdutl snapshot restore`, which etcdctl no longer has since etcd 3.6).
func runEtcdutl() {
	root := &cobra.Command{
		Use:        "etcdutl",
		Short:      "An administrative command line tool for etcd3.",
		SuggestFor: []string{"etcdutl"},
	}
	root.PersistentFlags().DurationVar(&etcdutl.FlockTimeout, "timeout", 10*time.Second,
		"time to wait to obtain a file lock on db file, 0 to block indefinitely")
	root.PersistentFlags().StringVarP(&etcdutl.OutputFormat, "write-out", "w", "simple",
		"set the output format (fields, json, protobuf, simple, table)")
	root.AddCommand(
		etcdutl.NewDefragCommand(),
		etcdutl.NewSnapshotCommand(),
		etcdutl.NewHashKVCommand(),
		etcdutl.NewVersionCommand(),
		etcdutl.NewCompletionCommand(),
		etcdutl.NewMigrateCommand(),
	)
	cobra.EnablePrefixMatching = true
	root.SetHelpTemplate(`{{.UsageString}}`)
	if err := root.Execute(); err != nil {
		cobrautl.ExitWithError(cobrautl.ExitError, err)
	}
}

func runCtr() {
	if err := ctr.New().Run(context.Background(), os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "ctr:", err)
		os.Exit(1)
	}
}
