// Command hepto-bundle is a multi-call binary (like busybox) holding the
// upstream programs a node runs for its whole life: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, kube-proxy, kubelet and
// containerd.
// Each program is the vanilla upstream entry point, linked from the module
// versions pinned in go.mod. The client tools kubectl, etcdctl, etcdutl and ctr are
// the multi-call binary hepto-tools (./tools), and containerd-shim-runc-v2 and
// pause binaries of their own (./containerd-shim-runc-v2, ./pause), all from
// the same module set; coredns from a module of its own (./coredns). See
// there why.
//
// The program is chosen by:
//
//  1. the base name of argv[0] (symlinks named after each program);
//  2. else the first argument (`hepto-bundle kube-apiserver ...`), after which
//     the arguments are shifted so the program sees argv[0] = its own name;
//     a program of another binary (`hepto-bundle kubectl get pods`) is run by
//     exec'ing that binary, next to hepto-bundle.
//
// See docs/bundle.rst.
package main

import (
	"context"

	"hepto/bundle/internal/multicall"
)

// bundle lists the programs linked in, and those of the binaries beside it.
var bundle = multicall.Binary{
	Name: "hepto-bundle",
	Programs: map[string]func(){
		"etcd":                    runEtcd,
		"kube-apiserver":          runKubeAPIServer,
		"kube-controller-manager": runKubeControllerManager,
		"kube-scheduler":          runKubeScheduler,
		"kube-proxy":              runKubeProxy,
		"kubelet":                 runKubelet,
		"containerd":              runContainerd,
	},
	Siblings: map[string]string{
		"kubectl":                 "hepto-tools",
		"etcdctl":                 "hepto-tools",
		"etcdutl":                 "hepto-tools",
		"ctr":                     "hepto-tools",
		"containerd-shim-runc-v2": "containerd-shim-runc-v2",
		"pause":                   "pause",
		"coredns":                 "coredns",
	},
}

func main() { bundle.Main() }

// background is the context upstream mains create for themselves.
func background() context.Context { return context.Background() }
