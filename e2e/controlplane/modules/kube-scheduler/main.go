// Code mirrored from k8s.io/kubernetes@v1.35.4/cmd/kube-scheduler/scheduler.go (Apache-2.0,
// Copyright The Kubernetes Authors). Wrapper so the binary can be built from
// Go modules; see ../../build.sh.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register" // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version" // for version metric registration
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	command := app.NewSchedulerCommand()
	code := cli.Run(command)
	os.Exit(code)
}
