// Mirrors go.etcd.io/etcd/server/v3/main.go (Apache-2.0, Copyright The etcd
// Authors). Wrapper so etcd can be built from Go modules; see ../../build.sh.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
