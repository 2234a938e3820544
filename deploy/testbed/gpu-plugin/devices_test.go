package main

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

func TestHostDevices(t *testing.T) {
	devs, err := HostDevices("GPU-fake-", 3, "/run/vk8s-gpus")
	if err != nil {
		t.Fatal(err)
	}
	want := []Device{
		{ID: "GPU-fake-0", HostPath: "/run/vk8s-gpus/nvidia0", ContainerPath: "/dev/nvidia0"},
		{ID: "GPU-fake-1", HostPath: "/run/vk8s-gpus/nvidia1", ContainerPath: "/dev/nvidia1"},
		{ID: "GPU-fake-2", HostPath: "/run/vk8s-gpus/nvidia2", ContainerPath: "/dev/nvidia2"},
	}
	if !reflect.DeepEqual(devs, want) {
		t.Errorf("HostDevices = %+v, want %+v", devs, want)
	}
	if devs, err := HostDevices("GPU-x-", 0, "/d"); err != nil || len(devs) != 0 {
		t.Errorf("HostDevices(0) = %v, %v; want none", devs, err)
	}
	for _, bad := range []struct {
		prefix string
		n      int
	}{{"", 1}, {"GPU,", 1}, {"GPU=", 1}, {"GPU ", 1}, {"GPU-", -1}, {strings.Repeat("x", 63), 1}} {
		if _, err := HostDevices(bad.prefix, bad.n, "/d"); err == nil {
			t.Errorf("HostDevices(%q, %d) succeeded, want an error", bad.prefix, bad.n)
		}
	}
}

func TestParseVNodeEnv(t *testing.T) {
	const m = "GPU-fake-3=/dev/nvidia3, GPU-fake-4=/dev/nvidia4,GPU-fake-7=/dev/nvidia7"
	dev := func(id, path string) Device { return Device{ID: id, HostPath: path, ContainerPath: path} }
	for _, tc := range []struct {
		name, visible, devMap string
		want                  []Device
	}{
		{"unset", "", "", []Device{}},
		{"empty with a map", "", m, []Device{}},
		{"blank", " ", "", []Device{}},
		{"none", "none", m, []Device{}},
		{"void", "void", "", []Device{}},
		{"listed order", "GPU-fake-4,GPU-fake-3", m, []Device{dev("GPU-fake-4", "/dev/nvidia4"), dev("GPU-fake-3", "/dev/nvidia3")}},
		{"blanks and empty items", " GPU-fake-7 ,,", m, []Device{dev("GPU-fake-7", "/dev/nvidia7")}},
		{"all", "all", m, []Device{dev("GPU-fake-3", "/dev/nvidia3"), dev("GPU-fake-4", "/dev/nvidia4"), dev("GPU-fake-7", "/dev/nvidia7")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseVNodeEnv(tc.visible, tc.devMap)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	for _, tc := range []struct{ name, visible, devMap string }{
		{"id not in the map", "GPU-fake-3,GPU-fake-5", m},
		{"no map", "GPU-fake-3", ""},
		{"listed twice", "GPU-fake-3,GPU-fake-3", m},
		{"malformed map entry", "GPU-fake-3", "GPU-fake-3"},
		{"relative path", "GPU-fake-3", "GPU-fake-3=nvidia3"},
		{"id mapped twice", "GPU-fake-3", "GPU-fake-3=/dev/nvidia3,GPU-fake-3=/dev/nvidia4"},
	} {
		t.Run("error/"+tc.name, func(t *testing.T) {
			if got, err := ParseVNodeEnv(tc.visible, tc.devMap); err == nil {
				t.Errorf("got %+v, want an error", got)
			}
		})
	}
}

func TestContainerResponse(t *testing.T) {
	devs, err := HostDevices("GPU-fake-", 8, "/run/vk8s-gpus")
	if err != nil {
		t.Fatal(err)
	}
	byID := NewPlugin(Config{Devices: devs, KubeletSocket: "/k/kubelet.sock"}).byID

	got, err := containerResponse(byID, "/run/vk8s-gpus/nvidiactl", []string{"GPU-fake-4", "GPU-fake-3"})
	if err != nil {
		t.Fatal(err)
	}
	wantEnv := map[string]string{
		"NVIDIA_VISIBLE_DEVICES": "GPU-fake-4,GPU-fake-3",
		"VK8S_GPU_DEVICE_MAP":    "GPU-fake-4=/dev/nvidia4,GPU-fake-3=/dev/nvidia3",
	}
	if !reflect.DeepEqual(got.Envs, wantEnv) {
		t.Errorf("Envs = %v, want %v", got.Envs, wantEnv)
	}
	wantSpecs := []string{
		"/run/vk8s-gpus/nvidia4 -> /dev/nvidia4 rw",
		"/run/vk8s-gpus/nvidia3 -> /dev/nvidia3 rw",
		"/run/vk8s-gpus/nvidiactl -> /dev/nvidiactl rw",
	}
	if specs := specStrings(got.Devices); !reflect.DeepEqual(specs, wantSpecs) {
		t.Errorf("Devices = %q, want %q", specs, wantSpecs)
	}
	if len(got.Mounts) != 0 || len(got.Annotations) != 0 || len(got.CdiDevices) != 0 {
		t.Errorf("unexpected mounts/annotations/CDI devices: %v", got)
	}

	// What the host handed a vNode is what a vNode-mode plugin hands on, unchanged.
	vdevs, err := ParseVNodeEnv(got.Envs[VisibleDevicesEnv], got.Envs[DeviceMapEnv])
	if err != nil {
		t.Fatal(err)
	}
	vbyID := NewPlugin(Config{Devices: vdevs, KubeletSocket: "/k/kubelet.sock"}).byID
	inner, err := containerResponse(vbyID, CtlContainerPath, []string{"GPU-fake-3"})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{VisibleDevicesEnv: "GPU-fake-3", DeviceMapEnv: "GPU-fake-3=/dev/nvidia3"}; !reflect.DeepEqual(inner.Envs, want) {
		t.Errorf("vNode-mode Envs = %v, want %v", inner.Envs, want)
	}
	if specs, want := specStrings(inner.Devices), []string{"/dev/nvidia3 -> /dev/nvidia3 rw", "/dev/nvidiactl -> /dev/nvidiactl rw"}; !reflect.DeepEqual(specs, want) {
		t.Errorf("vNode-mode Devices = %q, want %q", specs, want)
	}

	// No control node configured: only the GPUs.
	noCtl, err := containerResponse(byID, "", []string{"GPU-fake-0"})
	if err != nil {
		t.Fatal(err)
	}
	if specs, want := specStrings(noCtl.Devices), []string{"/run/vk8s-gpus/nvidia0 -> /dev/nvidia0 rw"}; !reflect.DeepEqual(specs, want) {
		t.Errorf("Devices without ctl = %q, want %q", specs, want)
	}
}

func TestContainerResponseErrors(t *testing.T) {
	devs, _ := HostDevices("GPU-fake-", 2, "/d")
	byID := NewPlugin(Config{Devices: devs, KubeletSocket: "/k/kubelet.sock"}).byID
	for _, req := range [][]string{{"GPU-fake-2"}, {"GPU-fake-0", "GPU-other-0"}, {"GPU-fake-1", "GPU-fake-1"}} {
		_, err := containerResponse(byID, "/d/nvidiactl", req)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("request %q: err = %v, want InvalidArgument", req, err)
		}
	}
}

func specStrings(specs []*pluginapi.DeviceSpec) []string {
	out := make([]string, len(specs))
	for i, s := range specs {
		out[i] = s.HostPath + " -> " + s.ContainerPath + " " + s.Permissions
	}
	return out
}

func TestEnsureDeviceNodes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mknod needs root")
	}
	dir := filepath.Join(t.TempDir(), "gpus")
	if err := EnsureDeviceNodes(dir, 5); err != nil {
		if errors.Is(err, syscall.EPERM) {
			t.Skipf("no CAP_MKNOD here: %v", err)
		}
		t.Fatal(err)
	}
	// A rerun with fewer devices keeps what fits, removes the rest and replaces a plain file.
	if err := os.Remove(filepath.Join(dir, "nvidia1")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nvidia1"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "unrelated"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := EnsureDeviceNodes(dir, 3); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	inodes := map[uint64]bool{}
	for _, e := range entries {
		names = append(names, e.Name())
		if e.Name() == "unrelated" {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dir, e.Name()), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != mkdev(1, 3) || st.Mode&0o777 != 0o666 {
			t.Errorf("%s: mode %o rdev %#x, want a 0666 character device 1:3", e.Name(), st.Mode, st.Rdev)
		}
		inodes[st.Ino] = true
	}
	if want := []string{"nvidia0", "nvidia1", "nvidia2", "nvidiactl", "unrelated"}; !reflect.DeepEqual(names, want) {
		t.Errorf("device dir holds %q, want %q", names, want)
	}
	if len(inodes) != 4 {
		t.Errorf("the 4 nodes share inodes: %v", inodes)
	}
	if mkdev(1, 3) != 0x103 || mkdev(195, 255) != 0xc3ff || mkdev(1, 256) != 0x100100 {
		t.Errorf("mkdev encodes wrongly")
	}
}

func TestReadEnviron(t *testing.T) {
	path := filepath.Join(t.TempDir(), "environ")
	data := "PATH=/bin\x00NVIDIA_VISIBLE_DEVICES=GPU-fake-3,GPU-fake-4\x00VK8S_GPU_DEVICE_MAP=GPU-fake-3=/dev/nvidia3,GPU-fake-4=/dev/nvidia4\x00"
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	env, err := readEnviron(path)
	if err != nil {
		t.Fatal(err)
	}
	if env[VisibleDevicesEnv] != "GPU-fake-3,GPU-fake-4" || env[DeviceMapEnv] != "GPU-fake-3=/dev/nvidia3,GPU-fake-4=/dev/nvidia4" || len(env) != 3 {
		t.Errorf("readEnviron = %v", env)
	}
}
