// Command hepto-bundle is a multi-call binary (like busybox) holding the
// upstream programs hepto runs: etcd, etcdctl, kube-apiserver,
// kube-controller-manager, kube-scheduler, kubelet, kubectl, containerd and
// containerd-shim-runc-v2. Each program is the vanilla upstream entry point,
// linked from the module versions pinned in go.mod.
//
// The program is chosen, in this order, by:
//
//  1. the base name of argv[0] (symlinks named after each program);
//  2. the first argument (`hepto-bundle kubectl get pods`), after which the
//     arguments are shifted so the program sees argv[0] = its own name;
//  3. the HEPTO_BUNDLE_PROGRAM environment variable, for programs that re-exec
//     themselves through os.Executable(), which resolves the symlink to
//     hepto-bundle (containerd-shim-runc-v2 does that to daemonize).
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
)

// envProgram names the program to run when neither argv[0] nor argv[1] does.
const envProgram = "HEPTO_BUNDLE_PROGRAM"

// programs maps each program name to its entry point. Entry points never
// return normally except where the upstream main also returns (exit 0).
var programs = map[string]func(){
	"etcd":                    runEtcd,
	"etcdctl":                 runEtcdctl,
	"kube-apiserver":          runKubeAPIServer,
	"kube-controller-manager": runKubeControllerManager,
	"kube-scheduler":          runKubeScheduler,
	"kubelet":                 runKubelet,
	"kubectl":                 runKubectl,
	"containerd":              runContainerd,
	"containerd-shim-runc-v2": runContainerdShimRuncV2,
}

// Programs returns the sorted program names (used by `hepto-bundle --list`).
func Programs() []string {
	names := make([]string, 0, len(programs))
	for name := range programs {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// pick returns the program to run and the argv it should see.
func pick(args []string, env string) (string, []string) {
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
	if _, ok := programs[env]; ok {
		return env, args
	}
	return "", args
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: %s PROGRAM [ARGS...]\n  or call it through a symlink named PROGRAM\nprograms: %s\n",
		filepath.Base(os.Args[0]), strings.Join(Programs(), " "))
}

func main() {
	name, args := pick(os.Args, os.Getenv(envProgram))
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

// background is the context upstream mains create for themselves.
func background() context.Context { return context.Background() }
