package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

const (
	// VisibleDevicesEnv lists the ids allocated to a container, comma separated.
	VisibleDevicesEnv = "NVIDIA_VISIBLE_DEVICES"
	// DeviceMapEnv maps each allocated id to its device node inside the container:
	// "id1=/dev/nvidia3,id2=/dev/nvidia4".
	DeviceMapEnv = "VK8S_GPU_DEVICE_MAP"
	// CtlContainerPath is where the control node appears in a container.
	CtlContainerPath = "/dev/nvidiactl"

	// The fake nodes reuse /dev/null's numbers: opening them works and does nothing.
	nodeMajor = 1
	nodeMinor = 3
	// maxIDLen is the device-plugin API's limit on a device id.
	maxIDLen = 63
)

// Device is one advertised GPU.
type Device struct {
	ID string
	// HostPath is the device node as the kubelet and container runtime see it.
	HostPath string
	// ContainerPath is where the node appears inside a container: /dev/nvidia<i>.
	ContainerPath string
}

// CtlHostPath is the control node of host mode.
func CtlHostPath(deviceDir string) string { return filepath.Join(deviceDir, "nvidiactl") }

// HostDevices returns the n devices of host mode: id <prefix><i>, node <deviceDir>/nvidia<i>,
// appearing in containers as /dev/nvidia<i>.
func HostDevices(prefix string, n int, deviceDir string) ([]Device, error) {
	if n < 0 {
		return nil, fmt.Errorf("device count %d is negative", n)
	}
	if prefix == "" {
		return nil, errors.New("the id prefix is empty")
	}
	if strings.ContainsAny(prefix, ",= \t\n") {
		return nil, fmt.Errorf("id prefix %q contains a comma, '=' or whitespace", prefix)
	}
	if n > 0 {
		if last := prefix + strconv.Itoa(n-1); len(last) > maxIDLen {
			return nil, fmt.Errorf("device id %q is longer than %d characters", last, maxIDLen)
		}
	}
	devs := make([]Device, n)
	for i := range devs {
		devs[i] = Device{
			ID:            prefix + strconv.Itoa(i),
			HostPath:      filepath.Join(deviceDir, "nvidia"+strconv.Itoa(i)),
			ContainerPath: "/dev/nvidia" + strconv.Itoa(i),
		}
	}
	return devs, nil
}

// ParseVNodeEnv resolves the devices of vNode mode from the value of NVIDIA_VISIBLE_DEVICES
// (visible) and of VK8S_GPU_DEVICE_MAP (deviceMap). The device nodes keep their paths: host path
// and container path are both the path the map gives.
func ParseVNodeEnv(visible, deviceMap string) ([]Device, error) {
	nodes := map[string]string{}
	var order []string
	for _, entry := range splitList(deviceMap) {
		id, path, ok := strings.Cut(entry, "=")
		id, path = strings.TrimSpace(id), strings.TrimSpace(path)
		if !ok || id == "" || path == "" {
			return nil, fmt.Errorf("%s entry %q is not id=/dev/nvidia<i>", DeviceMapEnv, entry)
		}
		if !filepath.IsAbs(path) {
			return nil, fmt.Errorf("%s entry %q: the path is not absolute", DeviceMapEnv, entry)
		}
		if prev, dup := nodes[id]; dup && prev != path {
			return nil, fmt.Errorf("%s names id %s twice (%s and %s)", DeviceMapEnv, id, prev, path)
		} else if !dup {
			order = append(order, id)
		}
		nodes[id] = path
	}

	var want []string
	switch v := strings.TrimSpace(visible); v {
	case "", "none", "void":
		return []Device{}, nil
	case "all":
		want = order
	default:
		want = splitList(v)
	}
	devs := make([]Device, 0, len(want))
	seen := map[string]bool{}
	for _, id := range want {
		if seen[id] {
			return nil, fmt.Errorf("device id %s is listed twice", id)
		}
		seen[id] = true
		path, ok := nodes[id]
		if !ok {
			return nil, fmt.Errorf("%s names no device node for id %s (is it passed to the plugin?)", DeviceMapEnv, id)
		}
		devs = append(devs, Device{ID: id, HostPath: path, ContainerPath: path})
	}
	return devs, nil
}

// splitList splits a comma-separated list, trimming blanks and dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// containerResponse builds the answer to one container's allocation request: the environment
// and device nodes of the requested ids, in request order. ctlHostPath "" leaves out
// /dev/nvidiactl. An unknown or repeated id is an InvalidArgument error.
func containerResponse(byID map[string]Device, ctlHostPath string, req []string) (*pluginapi.ContainerAllocateResponse, error) {
	resp := &pluginapi.ContainerAllocateResponse{}
	if len(req) == 0 {
		return resp, nil
	}
	visible := make([]string, 0, len(req))
	mapping := make([]string, 0, len(req))
	seen := map[string]bool{}
	for _, id := range req {
		d, ok := byID[id]
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "unknown device id %q", id)
		}
		if seen[id] {
			return nil, status.Errorf(codes.InvalidArgument, "device id %q requested twice", id)
		}
		seen[id] = true
		visible = append(visible, id)
		mapping = append(mapping, id+"="+d.ContainerPath)
		resp.Devices = append(resp.Devices, &pluginapi.DeviceSpec{
			ContainerPath: d.ContainerPath,
			HostPath:      d.HostPath,
			Permissions:   "rw",
		})
	}
	if ctlHostPath != "" {
		resp.Devices = append(resp.Devices, &pluginapi.DeviceSpec{
			ContainerPath: CtlContainerPath,
			HostPath:      ctlHostPath,
			Permissions:   "rw",
		})
	}
	resp.Envs = map[string]string{
		VisibleDevicesEnv: strings.Join(visible, ","),
		DeviceMapEnv:      strings.Join(mapping, ","),
	}
	return resp, nil
}

var nodeName = regexp.MustCompile(`^nvidia[0-9]+$`)

// EnsureDeviceNodes makes dir/nvidia0 .. dir/nvidia<n-1> and dir/nvidiactl character devices
// (1:3, mode 0666), keeping those that already are, and removes leftover dir/nvidia<j>, j >= n.
// It needs CAP_MKNOD.
func EnsureDeviceNodes(dir string, n int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	want := map[string]bool{"nvidiactl": true}
	for i := 0; i < n; i++ {
		want["nvidia"+strconv.Itoa(i)] = true
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !want[e.Name()] && nodeName.MatchString(e.Name()) && e.Type()&os.ModeCharDevice != 0 {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	for name := range want {
		if err := ensureNode(filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}

func ensureNode(path string) error {
	var st syscall.Stat_t
	err := syscall.Lstat(path, &st)
	if err == nil && st.Mode&syscall.S_IFMT == syscall.S_IFCHR && st.Rdev == mkdev(nodeMajor, nodeMinor) {
		return os.Chmod(path, 0o666)
	}
	if err == nil {
		if err := os.Remove(path); err != nil {
			return err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := syscall.Mknod(path, syscall.S_IFCHR|0o666, int(mkdev(nodeMajor, nodeMinor))); err != nil {
		return fmt.Errorf("mknod %s: %w", path, err)
	}
	return os.Chmod(path, 0o666) // past the umask
}

// mkdev encodes a Linux dev_t (glibc's gnu_dev_makedev).
func mkdev(major, minor uint64) uint64 {
	return (minor & 0xff) | (major&0xfff)<<8 | (minor&^0xff)<<12 | (major&^0xfff)<<32
}
