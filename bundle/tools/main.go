// Command hepto-tools is the multi-call binary of the client tools hepto runs
// now and then beside the programs of hepto-bundle: kubectl, etcdctl and
// containerd's ctr, each the body of its upstream main() with the same blank
// imports, from the same pinned module set (../go.mod).
//
// They are not in hepto-bundle because every process of a multi-call binary
// runs the package initialisers of every program linked into it: kubectl's
// alone allocate several MiB (k8s.io/kubectl/pkg/cmd/options: 4.4 MB), which
// each long-running component of a node would hold for nothing. Dispatch is
// hepto-bundle's (../internal/multicall): the symlinks kubectl, etcdctl and
// ctr, or `hepto-tools kubectl ...`; `hepto-bundle kubectl ...` execs this
// binary. See docs/bundle.rst and docs/memory.rst.
package main

import (
	"context"
	"fmt"
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"

	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl auth plugins

	"go.etcd.io/etcd/etcdctl/v3/ctlv3"

	ctr "github.com/containerd/containerd/v2/cmd/ctr/app"

	"hepto/bundle/internal/multicall"
)

var tools = multicall.Binary{
	Name: "hepto-tools",
	Programs: map[string]func(){
		"kubectl": runKubectl,
		"etcdctl": runEtcdctl,
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

func runCtr() {
	if err := ctr.New().Run(context.Background(), os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "ctr:", err)
		os.Exit(1)
	}
}
