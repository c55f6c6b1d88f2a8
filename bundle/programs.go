package main

// Each run* function is the body of the upstream program's own main(), with
// the same blank imports (JSON logging, client-go metrics, version metric,
// time zone data, kubectl auth plugins, containerd builtin plugins).

import (
	"fmt"
	"os"
	_ "time/tzdata" // kube-apiserver, kube-controller-manager: CronJob time zones

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"

	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl auth plugins

	"go.etcd.io/etcd/etcdctl/v3/ctlv3"
	"go.etcd.io/etcd/server/v3/etcdmain"

	containerd "github.com/containerd/containerd/v2/cmd/containerd/command"
	ctr "github.com/containerd/containerd/v2/cmd/ctr/app"

	_ "github.com/containerd/containerd/v2/cmd/containerd/builtins"
)

func runKubeAPIServer() { os.Exit(cli.Run(apiserver.NewAPIServerCommand())) }

func runKubeControllerManager() {
	os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
}

func runKubeScheduler() { os.Exit(cli.Run(scheduler.NewSchedulerCommand())) }

func runKubeProxy() { os.Exit(cli.Run(proxy.NewProxyCommand())) }

func runKubelet() { os.Exit(cli.Run(kubelet.NewKubeletCommand(background()))) }

func runKubectl() {
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := kubectlcmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
	}
}

func runEtcd() { etcdmain.Main(os.Args) }

func runEtcdctl() { ctlv3.MustStart() }

func runContainerd() {
	if err := containerd.App().Run(background(), os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "containerd:", err)
		os.Exit(1)
	}
}

func runCtr() {
	if err := ctr.New().Run(background(), os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "ctr:", err)
		os.Exit(1)
	}
}
