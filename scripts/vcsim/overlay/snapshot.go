// SPDX-License-Identifier: GPL-3.0-or-later
// Copyright (c) 2026 vmsafe.protect contributors

// Replaces simulator/snapshot.go of govmomi 0.24.2 (the overlay maps this file over it).
//
// Differences from the stock file, each as the vSphere API reference describes the method:
//   - RemoveSnapshot_Task(consolidate=false) leaves the delta disks unmerged and sets
//     runtime.consolidationNeeded (cleared by ConsolidateVMDisks_Task, see vmsafe_ext.go);
//   - RemoveSnapshot_Task(removeChildren=true) unregisters the children too, and the parent's
//     childSnapshot list is kept right;
//   - RenameSnapshot changes the name and/or description in the VM's snapshot tree.

package simulator

import (
	"fmt"
	"os"
	"path"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// VirtualMachineSnapshot is one snapshot of a VM.
type VirtualMachineSnapshot struct {
	mo.VirtualMachineSnapshot
}

func (v *VirtualMachineSnapshot) vm() *VirtualMachine {
	return Map.Get(v.Vm).(*VirtualMachine)
}

// createSnapshotFiles writes the snapshot's state file (<vm>-Snapshot<N>.vmsn) and records it in the
// VM's layout and layoutEx, so disk-usage queries see the snapshot.
func (v *VirtualMachineSnapshot) createSnapshotFiles() types.BaseMethodFault {
	vm := v.vm()
	dir := vm.Config.Files.SnapshotDirectory
	if dir == "" {
		dir = vm.Config.Files.VmPathName
	}
	// A few bytes of content so that layoutEx sizes are not all zero.
	content := []byte(fmt.Sprintf("vcsim snapshot state of %s (%s)\n", vm.Name, v.Self.Value))
	for index := 1; ; index++ {
		name := fmt.Sprintf("%s-Snapshot%d.vmsn", vm.Name, index)
		f, fault := vm.createFile(dir, name, false)
		if _, exists := fault.(*types.FileAlreadyExists); exists {
			continue
		}
		if fault != nil {
			return fault
		}
		_, _ = f.Write(content)
		_ = f.Close()

		p, _ := parseDatastorePath(dir)
		vm.useDatastore(p.Datastore)
		key := vm.addFileLayoutEx(object.DatastorePath{Datastore: p.Datastore, Path: path.Join(p.Path, name)},
			int64(len(content)))
		vm.addSnapshotLayout(v.Self, key)
		vm.addSnapshotLayoutEx(v.Self, key, -1)
		return nil
	}
}

// removeSnapshotFiles deletes the snapshot's files and its layout entries.
func (v *VirtualMachineSnapshot) removeSnapshotFiles(ctx *Context) types.BaseMethodFault {
	vm := v.vm()
	for i, l := range vm.Layout.Snapshot {
		if l.Key == v.Self {
			vm.Layout.Snapshot = append(vm.Layout.Snapshot[:i], vm.Layout.Snapshot[i+1:]...)
			break
		}
	}
	for i, l := range vm.LayoutEx.Snapshot {
		if l.Key != v.Self {
			continue
		}
		for _, file := range vm.LayoutEx.File {
			if file.Key != l.DataKey && file.Key != l.MemoryKey {
				continue
			}
			p, fault := parseDatastorePath(file.Name)
			if fault != nil {
				return fault
			}
			host := Map.Get(*vm.Runtime.Host).(*HostSystem)
			ds := Map.FindByName(p.Datastore, host.Datastore).(*Datastore)
			_ = os.Remove(path.Join(ds.Info.GetDatastoreInfo().Url, p.Path))
		}
		vm.LayoutEx.Snapshot = append(vm.LayoutEx.Snapshot[:i], vm.LayoutEx.Snapshot[i+1:]...)
		break
	}
	vm.RefreshStorageInfo(ctx, nil)
	return nil
}

// subtree returns ref and every snapshot below it in the tree.
func subtree(tree []types.VirtualMachineSnapshotTree, ref types.ManagedObjectReference) []types.ManagedObjectReference {
	node := findSnapshotInTree(tree, ref)
	if node == nil {
		return nil
	}
	return append([]types.ManagedObjectReference{ref}, allSnapshotsInTree(node.ChildSnapshotList)...)
}

// RemoveSnapshotTask implements RemoveSnapshot_Task.
func (v *VirtualMachineSnapshot) RemoveSnapshotTask(ctx *Context, req *types.RemoveSnapshot_Task) soap.HasFault {
	task := CreateTask(v, "removeSnapshot", func(t *Task) (types.AnyType, types.BaseMethodFault) {
		vm := v.vm()
		doomed := []types.ManagedObjectReference{req.This}
		Map.WithLock(vm, func() {
			var changes []types.PropertyChange
			if req.RemoveChildren {
				doomed = subtree(vm.Snapshot.RootSnapshotList, req.This)
			}
			parent := findParentSnapshotInTree(vm.Snapshot.RootSnapshotList, req.This)
			if cur := vm.Snapshot.CurrentSnapshot; cur != nil {
				for _, ref := range doomed {
					if *cur == ref {
						changes = append(changes, types.PropertyChange{Name: "snapshot.currentSnapshot", Val: parent})
						break
					}
				}
			}
			var children []types.ManagedObjectReference
			if node := findSnapshotInTree(vm.Snapshot.RootSnapshotList, req.This); node != nil && !req.RemoveChildren {
				for _, child := range node.ChildSnapshotList {
					children = append(children, child.Snapshot)
				}
			}
			if parent != nil { // the children move up to the parent
				if p, ok := Map.Get(*parent).(*VirtualMachineSnapshot); ok {
					var kept []types.ManagedObjectReference
					for _, c := range p.ChildSnapshot {
						if c != req.This {
							kept = append(kept, c)
						}
					}
					p.ChildSnapshot = append(kept, children...)
				}
			}

			roots := removeSnapshotInTree(vm.Snapshot.RootSnapshotList, req.This, req.RemoveChildren)
			if len(roots) == 0 {
				changes = []types.PropertyChange{{Name: "snapshot", Val: nil}}
			} else {
				changes = append(changes, types.PropertyChange{Name: "snapshot.rootSnapshotList", Val: roots})
			}
			// Without consolidation the delta disks stay in the chain: vSphere flags the VM for it.
			if req.Consolidate != nil && !*req.Consolidate {
				changes = append(changes, types.PropertyChange{Name: "runtime.consolidationNeeded", Val: true})
			}
			for _, ref := range doomed {
				if s, ok := Map.Get(ref).(*VirtualMachineSnapshot); ok {
					_ = s.removeSnapshotFiles(ctx)
				}
			}
			Map.Update(vm, changes)
		})
		for _, ref := range doomed {
			Map.Remove(ref)
		}
		return nil, nil
	})
	return &methods.RemoveSnapshot_TaskBody{Res: &types.RemoveSnapshot_TaskResponse{Returnval: task.Run()}}
}

// RevertToSnapshotTask implements RevertToSnapshot_Task: the snapshot becomes current, and the VM takes the
// power state recorded in it (powered on only when the snapshot holds memory).
func (v *VirtualMachineSnapshot) RevertToSnapshotTask(req *types.RevertToSnapshot_Task) soap.HasFault {
	task := CreateTask(v, "revertToSnapshot", func(t *Task) (types.AnyType, types.BaseMethodFault) {
		vm := v.vm()
		Map.WithLock(vm, func() {
			changes := []types.PropertyChange{{Name: "snapshot.currentSnapshot", Val: v.Self}}
			if node := findSnapshotInTree(vm.Snapshot.RootSnapshotList, v.Self); node != nil {
				state := node.State
				if req.SuppressPowerOn != nil && *req.SuppressPowerOn && state == types.VirtualMachinePowerStatePoweredOn {
					state = types.VirtualMachinePowerStatePoweredOff
				}
				changes = append(changes,
					types.PropertyChange{Name: "runtime.powerState", Val: state},
					types.PropertyChange{Name: "summary.runtime.powerState", Val: state})
			}
			Map.Update(vm, changes)
		})
		return nil, nil
	})
	return &methods.RevertToSnapshot_TaskBody{Res: &types.RevertToSnapshot_TaskResponse{Returnval: task.Run()}}
}

// RenameSnapshot implements RenameSnapshot: name and description are optional, an empty value keeps the old one.
func (v *VirtualMachineSnapshot) RenameSnapshot(req *types.RenameSnapshot) soap.HasFault {
	body := &methods.RenameSnapshotBody{}
	vm := v.vm()
	Map.WithLock(vm, func() {
		node := findSnapshotInTree(vm.Snapshot.RootSnapshotList, v.Self)
		if node == nil {
			body.Fault_ = Fault("snapshot not found", &types.NotFound{})
			return
		}
		if req.Name != "" {
			node.Name = req.Name
		}
		if req.Description != "" {
			node.Description = req.Description
		}
		Map.Update(vm, []types.PropertyChange{{Name: "snapshot.rootSnapshotList", Val: vm.Snapshot.RootSnapshotList}})
	})
	if body.Fault_ == nil {
		body.Res = &types.RenameSnapshotResponse{}
	}
	return body
}
