// SPDX-License-Identifier: GPL-3.0-or-later
// Copyright (c) 2026 vmsafe.protect contributors

// vmsafe.protect's additions to the govmomi 0.24.2 simulator (a new file of package simulator, added by the
// overlay). Each behaves as the vSphere API reference describes it:
//
//   - every VM reports its snapshot and CBT capabilities and runtime.consolidationNeeded=false (vcsim leaves
//     them unset, and clients then turn quiesce off or cannot tell "no" from "unknown");
//   - CreateSnapshotEx_Task (vSphere 7.0 U3) is CreateSnapshot_Task with a quiesceSpec instead of a quiesce flag;
//   - ConsolidateVMDisks_Task merges the leftover delta disks and clears runtime.consolidationNeeded;
//   - CreateSnapshot_Task with memory=false on a powered-on VM records the snapshot as poweredOff, as vSphere
//     does (the stock simulator ignores memory), so a revert to it leaves the VM powered off;
//   - CreateSnapshot_Task with quiesce=true fails with ToolsUnavailable, leaving no snapshot, when the VM runs
//     without VMware Tools (set guest.toolsRunningStatus through extraConfig "SET.guest.toolsRunningStatus");
//   - Fetch (what pyvmomi's property accessors call) of an unset property answers "unset" instead of
//     panicking on an empty MissingSet (the client saw RemoteDisconnected);
//   - CBT: change ids on snapshots and QueryChangedDiskAreas (vmsafe_cbt.go);
//   - RetrievePropertiesEx honours options.maxObjects and returns a token; ContinueRetrievePropertiesEx and
//     CancelRetrievePropertiesEx page through the rest, so clients' continuation loops are exercised.

package simulator

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator/internal"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// VmsafeSetup applies the extensions to the service and the current Map; call it once after Model.Create().
func VmsafeSetup(s *Service) {
	// The stock CreateSnapshotTask never sees the memory flag it is given; note it from the request body
	// (the one place every SOAP request passes) for vmsafeAfterTask.
	read := s.readAll
	s.readAll = func(r io.Reader) ([]byte, error) {
		body, err := read(r)
		if err == nil {
			noteSnapshotMemory(body)
		}
		return body, err
	}

	defaults := &vmDefaults{}
	defaults.Self = types.ManagedObjectReference{Type: "VmsafeDefaults", Value: "vmsafe-defaults"}
	for _, obj := range Map.All("VirtualMachine") {
		defaults.PutObject(obj)
	}
	Map.AddHandler(defaults) // VMs created later (CreateVM_Task, CloneVM_Task) get them too

	ref := Map.content().PropertyCollector
	pc := &PagingPropertyCollector{}
	pc.Self = ref
	Map.Put(pc)
}

// vmDefaults is a Registry handler that completes every VM put into the inventory.
type vmDefaults struct {
	mo.Folder // any mo type: handlers must be references
}

func (d *vmDefaults) PutObject(obj mo.Reference) {
	vm, ok := obj.(*VirtualMachine)
	if !ok {
		return
	}
	yes := types.NewBool(true)
	vm.Capability.SnapshotOperationsSupported = true
	vm.Capability.MultipleSnapshotsSupported = true
	vm.Capability.SnapshotConfigSupported = true
	vm.Capability.QuiescedSnapshotsSupported = true
	vm.Capability.DiskSharesSupported = true
	vm.Capability.RevertToSnapshotSupported = true
	vm.Capability.ChangeTrackingSupported = yes
	vm.Capability.DiskOnlySnapshotOnSuspendedVMSupported = yes
	if vm.Runtime.ConsolidationNeeded == nil {
		vm.Runtime.ConsolidationNeeded = types.NewBool(false)
	}
}

func (d *vmDefaults) UpdateObject(mo.Reference, []types.PropertyChange) {}
func (d *vmDefaults) RemoveObject(types.ManagedObjectReference)         {}

// ConsolidateVMDisksTask implements ConsolidateVMDisks_Task.
func (vm *VirtualMachine) ConsolidateVMDisksTask(req *types.ConsolidateVMDisks_Task) soap.HasFault {
	task := CreateTask(vm, "consolidateVMDisks", func(t *Task) (types.AnyType, types.BaseMethodFault) {
		Map.Update(vm, []types.PropertyChange{{Name: "runtime.consolidationNeeded", Val: false}})
		return nil, nil
	})
	return &methods.ConsolidateVMDisks_TaskBody{Res: &types.ConsolidateVMDisks_TaskResponse{Returnval: task.Run()}}
}

// snapshotMemory holds, per VM, the memory flags of CreateSnapshot_Task requests not yet run (FIFO).
var snapshotMemory = struct {
	sync.Mutex
	pending map[string][]bool
}{pending: map[string][]bool{}}

type createSnapshotEnvelope struct {
	Body struct {
		Req *struct {
			This   types.ManagedObjectReference `xml:"_this"`
			Memory bool                         `xml:"memory"`
		} `xml:"CreateSnapshot_Task"`
	} `xml:"Body"`
}

func noteSnapshotMemory(body []byte) {
	if !bytes.Contains(body, []byte("CreateSnapshot_Task")) {
		return
	}
	var env createSnapshotEnvelope
	if xml.Unmarshal(body, &env) != nil || env.Body.Req == nil {
		return
	}
	snapshotMemory.Lock()
	defer snapshotMemory.Unlock()
	vm := env.Body.Req.This.Value
	snapshotMemory.pending[vm] = append(snapshotMemory.pending[vm], env.Body.Req.Memory)
}

// takeSnapshotMemory returns the memory flag of the oldest pending CreateSnapshot_Task request for vm.
func takeSnapshotMemory(vm string) (memory bool, known bool) {
	snapshotMemory.Lock()
	defer snapshotMemory.Unlock()
	queue := snapshotMemory.pending[vm]
	if len(queue) == 0 {
		return false, false
	}
	snapshotMemory.pending[vm] = queue[1:]
	return queue[0], true
}

// CreateSnapshotExTask implements CreateSnapshotEx_Task through the stock CreateSnapshot_Task.
func (vm *VirtualMachine) CreateSnapshotExTask(req *types.CreateSnapshotEx_Task) soap.HasFault {
	snapshotMemory.Lock()
	snapshotMemory.pending[vm.Self.Value] = append(snapshotMemory.pending[vm.Self.Value], req.Memory)
	snapshotMemory.Unlock()
	res := vm.CreateSnapshotTask(&types.CreateSnapshot_Task{
		This: req.This, Name: req.Name, Description: req.Description, Memory: req.Memory,
		Quiesce: req.QuiesceSpec != nil,
	}).(*methods.CreateSnapshot_TaskBody)
	return &methods.CreateSnapshotEx_TaskBody{Res: &types.CreateSnapshotEx_TaskResponse{Returnval: res.Res.Returnval}}
}

// vmsafeAfterTask lets a finished task report what vSphere would (called by Task.Run in task.go).
func vmsafeAfterTask(t *Task, res types.AnyType, fault types.BaseMethodFault) (types.AnyType, types.BaseMethodFault) {
	if strings.TrimSuffix(t.Info.Name, vTaskSuffix) != "CreateSnapshot" || t.Info.Entity == nil {
		return res, fault
	}
	memory, known := takeSnapshotMemory(t.Info.Entity.Value)
	if fault != nil {
		return res, fault
	}
	vm, ok := Map.Get(*t.Info.Entity).(*VirtualMachine)
	snap, isRef := res.(types.ManagedObjectReference)
	if !ok || !isRef || vm.Snapshot == nil {
		return res, fault
	}
	node := findSnapshotInTree(vm.Snapshot.RootSnapshotList, snap)
	recordChangeIds(vm, snap) // vmsafe_cbt.go
	if node != nil && known && !memory && node.State == types.VirtualMachinePowerStatePoweredOn {
		node.State = types.VirtualMachinePowerStatePoweredOff // disks only: a revert leaves the VM off
	}
	tools := ""
	if vm.Guest != nil {
		tools = vm.Guest.ToolsRunningStatus
	}
	if node == nil || !node.Quiesced || vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn ||
		tools == string(types.VirtualMachineToolsRunningStatusGuestToolsRunning) {
		return res, fault
	}
	// vSphere checks for Tools before it takes anything: undo the snapshot so none is left.
	dropSnapshot(vm, snap)
	msg := "Cannot quiesce this virtual machine because VMware Tools is not currently available."
	out := &types.ToolsUnavailable{}
	out.FaultMessage = []types.LocalizableMessage{{Key: "msg.snapshot.quiesce.vmtools", Message: msg}}
	return nil, out
}

// dropSnapshot removes a snapshot that has no children from the VM, as if it had never been taken.
func dropSnapshot(vm *VirtualMachine, snap types.ManagedObjectReference) {
	parent := findParentSnapshotInTree(vm.Snapshot.RootSnapshotList, snap)
	roots := removeSnapshotInTree(vm.Snapshot.RootSnapshotList, snap, true)
	if s, ok := Map.Get(snap).(*VirtualMachineSnapshot); ok {
		_ = s.removeSnapshotFiles(internalContext)
	}
	if p, ok := Map.Get(derefOr(parent)).(*VirtualMachineSnapshot); ok && parent != nil {
		var kept []types.ManagedObjectReference
		for _, c := range p.ChildSnapshot {
			if c != snap {
				kept = append(kept, c)
			}
		}
		p.ChildSnapshot = kept
	}
	if len(roots) == 0 {
		Map.Update(vm, []types.PropertyChange{{Name: "snapshot", Val: nil}})
	} else {
		Map.Update(vm, []types.PropertyChange{
			{Name: "snapshot.rootSnapshotList", Val: roots},
			{Name: "snapshot.currentSnapshot", Val: parent},
		})
	}
	Map.Remove(snap)
}

func derefOr(ref *types.ManagedObjectReference) types.ManagedObjectReference {
	if ref == nil {
		return types.ManagedObjectReference{}
	}
	return *ref
}

// PagingPropertyCollector is the PropertyCollector with result paging (maxObjects + continuation tokens).
// vcsim makes one instance per session by reflection, so the pages live in a package-level map.
type PagingPropertyCollector struct {
	PropertyCollector
}

var pages = struct {
	sync.Mutex
	next int
	rest map[string][]types.ObjectContent
	size map[string]int
}{rest: map[string][]types.ObjectContent{}, size: map[string]int{}}

// page returns the first max objects and keeps the others under a new token ("" when none are left).
func page(objects []types.ObjectContent, max int) ([]types.ObjectContent, string) {
	if max <= 0 || len(objects) <= max {
		return objects, ""
	}
	pages.Lock()
	defer pages.Unlock()
	pages.next++
	token := strconv.Itoa(pages.next)
	pages.rest[token] = objects[max:]
	pages.size[token] = max
	return objects[:max], token
}

// RetrievePropertiesEx implements RetrievePropertiesEx with options.maxObjects.
func (pc *PagingPropertyCollector) RetrievePropertiesEx(ctx *Context, r *types.RetrievePropertiesEx) soap.HasFault {
	res := pc.PropertyCollector.RetrievePropertiesEx(ctx, r)
	body, ok := res.(*methods.RetrievePropertiesExBody)
	if !ok || body.Res == nil || body.Res.Returnval == nil {
		return res
	}
	result := body.Res.Returnval
	if len(result.Objects) == 0 {
		body.Res.Returnval = nil // vSphere answers "nothing" with an unset result
		return body
	}
	result.Objects, result.Token = page(result.Objects, int(r.Options.MaxObjects))
	return body
}

// ContinueRetrievePropertiesEx returns the next page for a token from RetrievePropertiesEx.
func (pc *PagingPropertyCollector) ContinueRetrievePropertiesEx(ctx *Context, r *types.ContinueRetrievePropertiesEx) soap.HasFault {
	body := &methods.ContinueRetrievePropertiesExBody{}
	pages.Lock()
	rest, ok := pages.rest[r.Token]
	size := pages.size[r.Token]
	delete(pages.rest, r.Token)
	delete(pages.size, r.Token)
	pages.Unlock()
	if !ok {
		body.Fault_ = Fault(fmt.Sprintf("unknown or finished token %q", r.Token),
			&types.InvalidArgument{InvalidProperty: "token"})
		return body
	}
	result := types.RetrieveResult{}
	result.Objects, result.Token = page(rest, size)
	body.Res = &types.ContinueRetrievePropertiesExResponse{Returnval: result}
	return body
}

// CancelRetrievePropertiesEx drops the remaining pages of a token.
func (pc *PagingPropertyCollector) CancelRetrievePropertiesEx(ctx *Context, r *types.CancelRetrievePropertiesEx) soap.HasFault {
	pages.Lock()
	delete(pages.rest, r.Token)
	delete(pages.size, r.Token)
	pages.Unlock()
	return &methods.CancelRetrievePropertiesExBody{Res: &types.CancelRetrievePropertiesExResponse{}}
}

// Fetch answers an unset property (vm.snapshot of a VM without snapshots) with an empty result.
func (pc *PagingPropertyCollector) Fetch(ctx *Context, req *internal.Fetch) soap.HasFault {
	if req.This != vim25.ServiceInstance && ctx.Map.Get(req.This) != nil {
		res := pc.PropertyCollector.RetrievePropertiesEx(ctx, &types.RetrievePropertiesEx{
			SpecSet: []types.PropertyFilterSpec{{
				PropSet:   []types.PropertySpec{{Type: req.This.Type, PathSet: []string{req.Prop}}},
				ObjectSet: []types.ObjectSpec{{Obj: req.This}},
			}},
		})
		if body, ok := res.(*methods.RetrievePropertiesExBody); ok && body.Res != nil && body.Res.Returnval != nil {
			objects := body.Res.Returnval.Objects
			if len(objects) == 1 && len(objects[0].PropSet) == 0 && len(objects[0].MissingSet) == 0 {
				return &internal.FetchBody{Res: &internal.FetchResponse{}}
			}
		}
	}
	return pc.PropertyCollector.Fetch(ctx, req)
}
