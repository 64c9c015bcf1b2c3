// SPDX-License-Identifier: GPL-3.0-or-later
// Copyright (c) 2026 vmsafe.protect contributors

// Changed Block Tracking for vmsafe.protect's simulator (a new file of package simulator, added by the overlay).
//
// vSphere gives each disk of a CBT-enabled VM a change id at every snapshot (backing.changeId in the snapshot's
// config), and QueryChangedDiskAreas(snapshot, deviceKey, startOffset, changeId) lists the areas written between
// changeId and that snapshot; changeId "*" lists every allocated area. The simulator's disks are plain files
// (<disk>-flat.vmdk in the datastore folder, written through the datastore HTTP interface), so a change id here
// is a list of per-block content hashes taken when the snapshot was: the areas "changed" are the blocks whose
// hashes differ, and the allocated ones are the blocks that are not all zero. Block size: 64 KiB.

package simulator

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const cbtBlock = 64 * 1024

var cbt = struct {
	sync.Mutex
	seq    int
	epochs map[string][][32]byte // change id -> block hashes of the disk when it was issued
}{epochs: map[string][][32]byte{}}

var zeroBlockHash = sha256.Sum256(make([]byte, cbtBlock))

var cbtSession = time.Now().UnixNano()

func diskCapacity(disk *types.VirtualDisk) int64 {
	if disk.CapacityInBytes > 0 {
		return disk.CapacityInBytes
	}
	return disk.CapacityInKB * 1024
}

// flatFile is the local file that holds a disk's data.
func flatFile(vm *VirtualMachine, fileName string) (string, types.BaseMethodFault) {
	p, fault := parseDatastorePath(fileName)
	if fault != nil {
		return "", fault
	}
	ds := vm.findDatastore(p.Datastore)
	if ds == nil {
		return "", &types.InvalidArgument{InvalidProperty: "datastore"}
	}
	name := strings.Replace(p.Path, ".vmdk", "-flat.vmdk", 1)
	return ds.Info.GetDatastoreInfo().Url + "/" + name, nil
}

func blockHashes(path string, capacity int64) ([][32]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	n := (capacity + cbtBlock - 1) / cbtBlock
	hashes := make([][32]byte, n)
	buf := make([]byte, cbtBlock)
	for i := int64(0); i < n; i++ {
		for j := range buf {
			buf[j] = 0
		}
		if _, err := f.ReadAt(buf, i*cbtBlock); err != nil && err != io.EOF {
			return nil, err
		}
		hashes[i] = sha256.Sum256(buf)
	}
	return hashes, nil
}

// recordChangeIds gives every disk of a new snapshot of a CBT-enabled VM a change id, in the snapshot's config and
// in the VM's current config (as vSphere shows them).
func recordChangeIds(vm *VirtualMachine, ref types.ManagedObjectReference) {
	snap, ok := Map.Get(ref).(*VirtualMachineSnapshot)
	if !ok || vm.Config.ChangeTrackingEnabled == nil || !*vm.Config.ChangeTrackingEnabled {
		return
	}
	cbt.Lock()
	defer cbt.Unlock()
	for _, dev := range snap.Config.Hardware.Device {
		disk, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			continue
		}
		path, fault := flatFile(vm, backing.FileName)
		if fault != nil {
			continue
		}
		hashes, err := blockHashes(path, diskCapacity(disk))
		if err != nil {
			continue
		}
		cbt.seq++
		// like vSphere's, ids are unique to this tracking session: another simulator never knows them
		id := fmt.Sprintf("52 %s %x/%d", strings.ReplaceAll(vm.Config.Uuid, "-", " "), cbtSession, cbt.seq)
		cbt.epochs[id] = hashes
		backing.ChangeId = id
		for _, cur := range vm.Config.Hardware.Device {
			if d, ok := cur.(*types.VirtualDisk); ok && d.Key == disk.Key {
				if b, ok := d.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
					b.ChangeId = id
				}
			}
		}
	}
}

// QueryChangedDiskAreas implements VirtualMachine.QueryChangedDiskAreas.
func (vm *VirtualMachine) QueryChangedDiskAreas(req *types.QueryChangedDiskAreas) soap.HasFault {
	body := &methods.QueryChangedDiskAreasBody{}
	fail := func(msg string) soap.HasFault {
		body.Fault_ = Fault(msg, &types.InvalidArgument{InvalidProperty: "changeId"})
		return body
	}
	if req.Snapshot == nil {
		return fail("a snapshot is required")
	}
	snap, ok := Map.Get(*req.Snapshot).(*VirtualMachineSnapshot)
	if !ok {
		body.Fault_ = Fault("", &types.ManagedObjectNotFound{Obj: *req.Snapshot})
		return body
	}
	var disk *types.VirtualDisk
	for _, dev := range snap.Config.Hardware.Device {
		if d, ok := dev.(*types.VirtualDisk); ok && d.Key == req.DeviceKey {
			disk = d
		}
	}
	if disk == nil {
		return fail(fmt.Sprintf("no disk with key %d in the snapshot", req.DeviceKey))
	}
	backing, _ := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	cbt.Lock()
	defer cbt.Unlock()
	if backing == nil || cbt.epochs[backing.ChangeId] == nil {
		return fail("change tracking was not active when the snapshot was taken")
	}
	now := cbt.epochs[backing.ChangeId]
	var then [][32]byte
	if req.ChangeId != "*" {
		then = cbt.epochs[req.ChangeId]
		if then == nil || len(then) != len(now) {
			return fail(fmt.Sprintf("unknown or incompatible changeId %q", req.ChangeId))
		}
	}
	capacity := diskCapacity(disk)
	info := types.DiskChangeInfo{StartOffset: req.StartOffset, Length: capacity - req.StartOffset}
	for i := req.StartOffset / cbtBlock; i < int64(len(now)); i++ {
		changed := now[i] != zeroBlockHash
		if then != nil {
			changed = now[i] != then[i]
		}
		if !changed {
			continue
		}
		start, length := i*cbtBlock, int64(cbtBlock)
		if start+length > capacity {
			length = capacity - start
		}
		areas := info.ChangedArea
		if k := len(areas) - 1; k >= 0 && areas[k].Start+areas[k].Length == start {
			areas[k].Length += length
		} else {
			info.ChangedArea = append(areas, types.DiskChangeExtent{Start: start, Length: length})
		}
	}
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: info}
	return body
}
