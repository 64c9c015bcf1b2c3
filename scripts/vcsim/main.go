// SPDX-License-Identifier: GPL-3.0-or-later
// Copyright (c) 2026 vmsafe.protect contributors

// vcsim for the vmsafe.protect tests: govmomi's simulator library (Debian's golang-github-vmware-govmomi-dev)
// with the project's overlay (overlay/*.go, see docs/vmware.md) that fixes the bugs pyvmomi hits and adds the
// methods the collection uses. Built by build.sh; started by the tests on a free port.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
	"github.com/vmware/govmomi/simulator/vpx"
	"github.com/vmware/govmomi/vim25/types"
)

func main() {
	listen := flag.String("l", "127.0.0.1:8989", "listen address (port 0 picks a free port)")
	envFile := flag.String("E", "", "write VCSIM_URL, VCSIM_HOST, VCSIM_PORT, VCSIM_USERNAME, VCSIM_PASSWORD to this file once listening")
	esxMode := flag.Bool("esx", false, "simulate a standalone ESXi host instead of vCenter")
	username := flag.String("username", "user", "login user name")
	password := flag.String("password", "pass", "login password")
	dc := flag.Int("dc", 1, "number of datacenters")
	cluster := flag.Int("cluster", 1, "clusters per datacenter")
	host := flag.Int("host", 1, "standalone hosts per datacenter")
	clusterHost := flag.Int("cluster-host", 3, "hosts per cluster")
	vms := flag.Int("vm", 2, "VMs per resource pool (standalone host and cluster)")
	ds := flag.Int("ds", 1, "datastores")
	apiVersion := flag.String("api-version", "", "API version to report (default: the library's)")
	trace := flag.Bool("trace", false, "log SOAP traffic to stderr")
	delay := flag.Int("delay", 0, "milliseconds added to every method call")
	taskDelay := flag.Int("task-delay", 0, "milliseconds tasks on VMs and snapshots stay queued before they run (cancelable)")
	plain := flag.Bool("http", false, "serve plain HTTP instead of HTTPS")
	flag.Parse()

	model := simulator.VPX()
	if *esxMode {
		model = simulator.ESX()
	} else {
		model.Datacenter = *dc
		model.Cluster = *cluster
		model.Host = *host
		model.ClusterHost = *clusterHost
	}
	model.Machine = *vms
	model.Datastore = *ds
	model.DelayConfig.Delay = *delay
	if *apiVersion != "" {
		for _, content := range []*types.ServiceContent{&esx.ServiceContent, &vpx.ServiceContent} {
			content.About.ApiVersion = *apiVersion
			content.About.Version = *apiVersion
		}
	}
	simulator.Trace = *trace
	simulator.TaskDelay = time.Duration(*taskDelay) * time.Millisecond

	if err := model.Create(); err != nil {
		log.Fatalf("vcsim: creating the inventory: %v", err)
	}
	defer model.Remove()
	// The project's overlay: VM defaults (capabilities, consolidationNeeded) and a paging property collector.
	simulator.VmsafeSetup(model.Service)

	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, *password)}
	if !*plain {
		model.Service.TLS = new(tls.Config)
	}
	server := model.Service.NewServer()
	defer server.Close()

	clean := *server.URL
	clean.User = nil
	if *envFile != "" {
		body := fmt.Sprintf("VCSIM_URL=%s\nVCSIM_HOST=%s\nVCSIM_PORT=%s\nVCSIM_USERNAME=%s\nVCSIM_PASSWORD=%s\n",
			clean.String(), clean.Hostname(), clean.Port(), *username, *password)
		tmp := *envFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			log.Fatalf("vcsim: %v", err)
		}
		if err := os.Rename(tmp, *envFile); err != nil { // readers never see half a file
			log.Fatalf("vcsim: %v", err)
		}
	}
	fmt.Printf("vcsim listening on %s (%s)\n", clean.String(), strings.TrimSpace(modeName(*esxMode)))

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}

func modeName(esxMode bool) string {
	if esxMode {
		return "ESXi"
	}
	return "vCenter"
}
