// SPDX-License-Identifier: GPL-3.0-or-later
// Copyright (c) 2026 vmsafe.protect contributors

// Replaces simulator/task.go of govmomi 0.24.2 (the overlay maps this file over it).
//
// The stock version sets TaskInfo.entity to whatever object the method ran on, including objects that are
// not managed entities (a VirtualMachineSnapshot, the FileManager, the VirtualDiskManager); pyvmomi then
// fails to decode the task (TypeError). vSphere reports the VM for snapshot tasks and no entity for
// non-entities, which is what taskEntity() does here. After a task runs, vmsafeAfterTask (vmsafe_ext.go)
// may turn its result into the fault vSphere would report (quiesce without VMware Tools).
//
// Stock vcsim runs every task inside the call that starts it. With TaskDelay set (main.go -task-delay), tasks
// on VMs and snapshots are queued and run that much later, as on a busy host, and CancelTask stops a task
// that has not run yet: so clients' waiting, timeouts and cancellation can be tested.

package simulator

import (
	"fmt"
	"reflect"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// TaskDelay is how long tasks on VMs and snapshots wait before they run; 0 runs them at once (stock).
var TaskDelay time.Duration

const vTaskSuffix = "_Task" // suffix of the vSphere method names
const sTaskSuffix = "Task"  // suffix of the simulator's Go method names

// Task is a vSphere task whose Execute func runs synchronously in Run.
type Task struct {
	mo.Task

	Execute func(*Task) (types.AnyType, types.BaseMethodFault)

	owner    types.ManagedObjectReference // the object the method ran on, locked while the task runs
	canceled int32
}

// TaskRunner is an object that is also the body of its own task (see NewTask).
type TaskRunner interface {
	mo.Reference

	Run(*Task) (types.AnyType, types.BaseMethodFault)
}

// NewTask makes a task named after the runner's Go type ("VM" spelled "Vm" as in the vmodl ids).
func NewTask(runner TaskRunner) *Task {
	name := strings.Replace(reflect.TypeOf(runner).Elem().Name(), "VM", "Vm", 1)
	return CreateTask(runner.Reference(), name, runner.Run)
}

// taskEntity returns the managed entity a task on ref is about, or nil when there is none.
func taskEntity(ref types.ManagedObjectReference) (*types.ManagedObjectReference, string) {
	switch obj := Map.Get(ref).(type) {
	case *VirtualMachineSnapshot:
		vm := obj.Vm
		if o, ok := Map.Get(vm).(mo.Entity); ok {
			return &vm, o.Entity().Name
		}
		return &vm, vm.Value
	case mo.Entity:
		return &ref, obj.Entity().Name
	}
	return nil, ""
}

// CreateTask registers a queued task for a method run on e; name is "fooTask" or "foo".
func CreateTask(e mo.Reference, name string, run func(*Task) (types.AnyType, types.BaseMethodFault)) *Task {
	ref := e.Reference()
	id := strings.TrimSuffix(name, sTaskSuffix)
	if id != name {
		name = id + vTaskSuffix
	}

	task := &Task{Execute: run, owner: ref}
	task.Self = Map.newReference(task)
	task.Info.Key = task.Self.Value
	task.Info.Task = task.Self
	task.Info.Name = ucFirst(name)
	task.Info.DescriptionId = fmt.Sprintf("%s.%s", ref.Type, id)
	task.Info.Entity, task.Info.EntityName = taskEntity(ref)
	task.Info.Reason = &types.TaskReasonUser{UserName: "vcsim"}
	task.Info.QueueTime = time.Now()
	task.Info.State = types.TaskInfoStateQueued
	Map.Put(task)
	return task
}

// Run executes the task (now, or after TaskDelay) and records its outcome; it returns the task's reference.
func (t *Task) Run() types.ManagedObjectReference {
	if TaskDelay > 0 && (t.owner.Type == "VirtualMachine" || t.owner.Type == "VirtualMachineSnapshot") {
		t.Info.Cancelable = true
		go func() {
			time.Sleep(TaskDelay)
			Map.WithLock(t.owner, t.execute)
		}()
		return t.Self
	}
	t.execute()
	return t.Self
}

func (t *Task) execute() {
	if atomic.LoadInt32(&t.canceled) != 0 {
		t.finish(nil, &types.RequestCanceled{})
		return
	}
	Map.Update(t, []types.PropertyChange{
		{Name: "info.startTime", Val: time.Now()},
		{Name: "info.state", Val: types.TaskInfoStateRunning},
		{Name: "info.cancelable", Val: false},
	})
	res, fault := t.Execute(t)
	t.finish(vmsafeAfterTask(t, res, fault))
}

func (t *Task) finish(res types.AnyType, fault types.BaseMethodFault) {
	state := types.TaskInfoStateSuccess
	var info interface{}
	if fault != nil {
		state = types.TaskInfoStateError
		info = types.LocalizedMethodFault{Fault: fault, LocalizedMessage: faultMessage(fault)}
	}
	Map.Update(t, []types.PropertyChange{
		{Name: "info.completeTime", Val: time.Now()},
		{Name: "info.state", Val: state},
		{Name: "info.result", Val: res},
		{Name: "info.error", Val: info},
	})
}

// CancelTask implements CancelTask: a queued task is marked canceled and ends with RequestCanceled.
func (t *Task) CancelTask(req *types.CancelTask) soap.HasFault {
	body := &methods.CancelTaskBody{}
	if t.Info.State != types.TaskInfoStateQueued || !t.Info.Cancelable {
		body.Fault_ = Fault("the task cannot be canceled in its current state", &types.InvalidState{})
		return body
	}
	atomic.StoreInt32(&t.canceled, 1)
	body.Res = &types.CancelTaskResponse{}
	return body
}

// faultMessage is the text a client shows: the fault's own message when it has one, else its type.
func faultMessage(fault types.BaseMethodFault) string {
	if msg := fault.GetMethodFault().FaultMessage; len(msg) != 0 && msg[0].Message != "" {
		return msg[0].Message
	}
	if _, ok := fault.(*types.RequestCanceled); ok {
		return "The task was canceled by a user."
	}
	return strings.TrimPrefix(fmt.Sprintf("%T", fault), "*types.")
}
