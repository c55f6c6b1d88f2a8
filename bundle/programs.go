package main

// Each run* function is the body of the upstream program's own main(), with
// the same blank imports (JSON logging, client-go metrics, version metric,
// time zone data, containerd builtin plugins). The client tools are in
// ./tools: their package initialisers would run in every process here.

import (
	"fmt"
	"os"
	_ "time/tzdata" // kube-apiserver, kube-controller-manager: CronJob time zones

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"

	"go.etcd.io/etcd/server/v3/etcdmain"

	containerd "github.com/containerd/containerd/v2/cmd/containerd/command"

	_ "github.com/containerd/containerd/v2/cmd/containerd/builtins"
)

func runKubeAPIServer() { os.Exit(cli.Run(apiserver.NewAPIServerCommand())) }

func runKubeControllerManager() {
	os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
}

func runKubeScheduler() { os.Exit(cli.Run(scheduler.NewSchedulerCommand())) }

func runKubeProxy() { os.Exit(cli.Run(proxy.NewProxyCommand())) }

func runKubelet() { os.Exit(cli.Run(kubelet.NewKubeletCommand(background()))) }

func runEtcd() { etcdmain.Main(os.Args) }

func runContainerd() {
	if err := containerd.App().Run(background(), os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "containerd:", err)
		os.Exit(1)
	}
}
