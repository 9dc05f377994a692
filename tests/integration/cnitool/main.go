// A CNI runtime for tests, written for nvctl: it calls the plugin exactly as libcni does
// (libcni is the library containerd, CRI-O and podman use), with cnitool's command line:
//
//	cnitool add|check|del|validate NETWORK NETNS
//
// NETCONFPATH: the directory of *.conflist files; CNI_PATH: the plugin directories;
// CNI_IFNAME (default eth0), CNI_CONTAINERID (default: from the namespace path),
// CNI_CACHEDIR (where ADD's result is kept for CHECK and DEL), CNI_ARGS ("K=V;K=V").
// Built against Debian's golang-github-appc-cni-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o cnitool .
package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "cnitool: "+format+"\n", a...)
	os.Exit(1)
}

func env(name, dflt string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return dflt
}

func main() {
	if len(os.Args) != 4 {
		fail("usage: cnitool add|check|del|validate NETWORK NETNS")
	}
	command, network, netns := os.Args[1], os.Args[2], os.Args[3]
	list, err := libcni.LoadConfList(env("NETCONFPATH", "/etc/cni/net.d"), network)
	if err != nil {
		fail("loading %s: %v", network, err)
	}
	var args [][2]string
	for _, kv := range strings.Split(os.Getenv("CNI_ARGS"), ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			args = append(args, [2]string{k, v})
		}
	}
	id := fmt.Sprintf("%x", sha256.Sum256([]byte(netns)))[:16]
	rt := &libcni.RuntimeConf{ContainerID: env("CNI_CONTAINERID", id), NetNS: netns,
		IfName: env("CNI_IFNAME", "eth0"), Args: args}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), os.Getenv("CNI_CACHEDIR"), nil)
	ctx := context.Background()
	switch command {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail("ADD: %v", err)
		}
		if err := result.Print(); err != nil {
			fail("printing the result: %v", err)
		}
	case "check":
		err = cni.CheckNetworkList(ctx, list, rt)
	case "del":
		err = cni.DelNetworkList(ctx, list, rt)
	case "validate":
		var caps []string
		caps, err = cni.ValidateNetworkList(ctx, list)
		if err == nil {
			fmt.Println(strings.Join(caps, " "))
		}
	default:
		fail("unknown command %q", command)
	}
	if err != nil {
		fail("%s: %v", strings.ToUpper(command), err)
	}
}
