// Command hepto-bundle is a multi-call binary (like busybox) holding the
// upstream programs hepto runs: etcd, etcdctl, kube-apiserver, kube-proxy,
// kube-controller-manager, kube-scheduler, kubelet, kubectl, containerd and
// containerd's ctr.
// Each program is the vanilla upstream entry point, linked from the module
// versions pinned in go.mod. containerd-shim-runc-v2 and pause are built from
// the same module set as binaries of their own (./containerd-shim-runc-v2 and
// ./pause, see there why); coredns from a module of its own (./coredns).
//
// The program is chosen by:
//
//  1. the base name of argv[0] (symlinks named after each program);
//  2. else the first argument (`hepto-bundle kubectl get pods`), after which
//     the arguments are shifted so the program sees argv[0] = its own name.
//
// See docs/bundle.rst.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// siblings are programs built as their own binary next to hepto-bundle;
// `hepto-bundle NAME args...` execs them so the fallback form covers them too.
var siblings = map[string]bool{"containerd-shim-runc-v2": true, "pause": true, "coredns": true}

// programs maps each program name to its entry point. Entry points never
// return normally except where the upstream main also returns (exit 0).
var programs = map[string]func(){
	"etcd":                    runEtcd,
	"etcdctl":                 runEtcdctl,
	"kube-apiserver":          runKubeAPIServer,
	"kube-controller-manager": runKubeControllerManager,
	"kube-scheduler":          runKubeScheduler,
	"kube-proxy":              runKubeProxy,
	"kubelet":                 runKubelet,
	"kubectl":                 runKubectl,
	"containerd":              runContainerd,
	"ctr":                     runCtr,
}

// Programs returns the sorted program names, siblings included (used by
// `hepto-bundle --list`).
func Programs() []string {
	names := make([]string, 0, len(programs)+len(siblings))
	for name := range programs {
		names = append(names, name)
	}
	for name := range siblings {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// pick returns the program to run and the argv it should see.
func pick(args []string) (string, []string) {
	if len(args) == 0 {
		return "", args
	}
	name := strings.TrimSuffix(filepath.Base(args[0]), ".exe")
	if _, ok := programs[name]; ok {
		return name, args
	}
	if len(args) > 1 {
		if _, ok := programs[args[1]]; ok {
			return args[1], args[1:]
		}
	}
	return "", args
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: %s PROGRAM [ARGS...]\n  or call it through a symlink named PROGRAM\nprograms: %s\n",
		filepath.Base(os.Args[0]), strings.Join(Programs(), " "))
}

func main() {
	name, args := pick(os.Args)
	if name == "" && len(os.Args) > 1 && siblings[os.Args[1]] {
		execSibling(os.Args[1], os.Args[2:])
	}
	if name == "" {
		if len(os.Args) > 1 && os.Args[1] == "--list" {
			fmt.Println(strings.Join(Programs(), "\n"))
			return
		}
		usage()
		os.Exit(2)
	}
	os.Args = args
	programs[name]()
}

// execSibling replaces this process with the program built next to the
// (symlink-resolved) hepto-bundle executable.
func execSibling(name string, args []string) {
	self, err := os.Executable()
	if err == nil {
		path := filepath.Join(filepath.Dir(self), name)
		err = syscall.Exec(path, append([]string{path}, args...), os.Environ())
	}
	fmt.Fprintf(os.Stderr, "hepto-bundle: cannot run %s: %v\n", name, err)
	os.Exit(127)
}

// background is the context upstream mains create for themselves.
func background() context.Context { return context.Background() }
