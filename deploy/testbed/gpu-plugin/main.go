// Command vk8s-gpu-plugin is a fake-GPU Kubernetes device plugin for the vk8s testbed.
//
// It advertises the extended resource nvidia.com/gpu (--resource) to a kubelet through the
// device-plugin API (k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1), so that pods, and the vNode
// pods of virtual clusters in particular, can request GPUs on machines that have none. There is no
// driver: each "GPU" is a character device node that reuses the major/minor of /dev/null (1:3),
// so a container can open it but nothing happens.
//
// # Modes
//
// Host mode (--devices N --id-prefix P) advertises N devices with ids P0 .. P(N-1) (default
// prefix "GPU-fake-"). It creates one distinct device node per device, DIR/nvidia<i> for id P<i>,
// plus DIR/nvidiactl, under --device-dir DIR (default /run/vk8s-gpus).
//
// vNode mode (--from-env VAR, normally NVIDIA_VISIBLE_DEVICES) runs inside a vNode, a container
// that was itself given GPUs by a host-mode plugin, and re-advertises exactly the GPUs that
// container got to the vNode's own kubelet: the ids listed in VAR, each with the device node
// named for it in VK8S_GPU_DEVICE_MAP (see below). VAR empty or unset (or "none"/"void") means
// zero devices: the plugin still registers and keeps running. "all" means every id of the map.
// An id that the map does not name, or whose node is not a character device, is a startup error.
// --environ FILE reads both variables from a NUL-separated environ file such as /proc/1/environ
// instead of the plugin's own environment (useful when a service manager does not pass the
// container's environment on).
//
// # What Allocate returns
//
// For each container request, in request order of the ids:
//
//	NVIDIA_VISIBLE_DEVICES=<id>,<id>,...                     exactly the allocated ids
//	VK8S_GPU_DEVICE_MAP=<id>=/dev/nvidia<i>,<id>=/dev/nvidia<j>,...
//	device nodes: each allocated device's node at /dev/nvidia<i> (rw), and /dev/nvidiactl (rw)
//
// VK8S_GPU_DEVICE_MAP is the contract between the two modes: it tells a plugin running in vNode
// mode inside the container which /dev/nvidia* node belongs to which id, so ids and node names
// stay independent (in a vNode that got GPU-fake-3 and GPU-fake-4 they are /dev/nvidia3 and
// /dev/nvidia4, not 0 and 1). A vNode-mode plugin passes the same node paths on to its own
// containers (host path = container path), so the scheme nests to any depth. In host mode the
// index i is the device's index on the host; /dev/nvidiactl comes from DIR/nvidiactl, and in vNode
// mode from the vNode's /dev/nvidiactl (left out, with a warning, if that does not exist).
//
// # Kubelet registration
//
// The plugin serves the DevicePlugin gRPC service on vk8s-gpu.sock in the directory of
// --kubelet-socket (default /var/lib/kubelet/device-plugins/kubelet.sock) and registers it with
// the kubelet there. It polls every --poll-interval (1s): when kubelet.sock appears or is replaced
// (a new inode: the kubelet restarted), or when its own socket was removed (a starting kubelet
// wipes the directory), it recreates its socket and registers again. GetDevicePluginOptions asks
// for neither PreStartContainer nor GetPreferredAllocation; ListAndWatch sends the device list
// once (all Healthy) and holds the stream open. SIGTERM or SIGINT stops it cleanly and removes
// its socket. It logs one line per registration and per Allocate to stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

func main() {
	logger := log.New(os.Stderr, "vk8s-gpu-plugin: ", log.LstdFlags)
	if err := run(os.Args[1:], logger); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		logger.Printf("error: %v", err)
		os.Exit(1)
	}
}

func run(args []string, logger *log.Logger) error {
	fs := flag.NewFlagSet("vk8s-gpu-plugin", flag.ContinueOnError)
	devices := fs.Int("devices", -1, "host mode: advertise this many fake GPUs (-1: not host mode)")
	idPrefix := fs.String("id-prefix", "GPU-fake-", "host mode: device ids are <prefix>0 .. <prefix>N-1")
	deviceDir := fs.String("device-dir", "/run/vk8s-gpus", "host mode: directory for the device nodes nvidia<i> and nvidiactl")
	fromEnv := fs.String("from-env", "", "vNode mode: re-advertise the comma-separated ids in this environment variable (normally NVIDIA_VISIBLE_DEVICES)")
	environ := fs.String("environ", "", "vNode mode: read the variables from this NUL-separated environ file (e.g. /proc/1/environ) instead of the process environment")
	resource := fs.String("resource", "nvidia.com/gpu", "extended resource name to advertise")
	kubeletSocket := fs.String("kubelet-socket", pluginapi.KubeletSocket, "the kubelet's device-plugin registration socket; the plugin's own socket goes in the same directory")
	pollInterval := fs.Duration("poll-interval", time.Second, "how often to check for a restarted kubelet")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if !strings.Contains(*resource, "/") {
		return fmt.Errorf("--resource %q is not an extended resource name (domain/name)", *resource)
	}
	if *pollInterval <= 0 {
		return fmt.Errorf("--poll-interval must be positive")
	}

	cfg := Config{
		Resource:      *resource,
		KubeletSocket: *kubeletSocket,
		PollInterval:  *pollInterval,
		Logger:        logger,
	}
	switch {
	case *fromEnv != "" && *devices >= 0:
		return fmt.Errorf("--devices (host mode) and --from-env (vNode mode) exclude each other")
	case *fromEnv != "":
		lookup := os.LookupEnv
		if *environ != "" {
			env, err := readEnviron(*environ)
			if err != nil {
				return err
			}
			lookup = func(k string) (string, bool) { v, ok := env[k]; return v, ok }
		}
		visible, _ := lookup(*fromEnv)
		devMap, _ := lookup(DeviceMapEnv)
		devs, err := ParseVNodeEnv(visible, devMap)
		if err != nil {
			return fmt.Errorf("%s=%q, %s=%q: %w", *fromEnv, visible, DeviceMapEnv, devMap, err)
		}
		for _, d := range devs {
			if err := checkCharDevice(d.HostPath); err != nil {
				return fmt.Errorf("device %s: %w", d.ID, err)
			}
		}
		cfg.Devices = devs
		if len(devs) > 0 {
			if err := checkCharDevice(CtlContainerPath); err != nil {
				logger.Printf("warning: %v; containers will get no %s", err, CtlContainerPath)
			} else {
				cfg.CtlHostPath = CtlContainerPath
			}
		}
		logger.Printf("vNode mode: %d device(s) from $%s %s", len(devs), *fromEnv, strings.Join(ids(devs), ","))
	case *devices >= 0:
		devs, err := HostDevices(*idPrefix, *devices, *deviceDir)
		if err != nil {
			return err
		}
		if err := EnsureDeviceNodes(*deviceDir, *devices); err != nil {
			return err
		}
		cfg.Devices = devs
		cfg.CtlHostPath = CtlHostPath(*deviceDir)
		logger.Printf("host mode: %d device(s) %s*, nodes in %s", len(devs), *idPrefix, *deviceDir)
	default:
		return fmt.Errorf("give --devices N (host mode) or --from-env VAR (vNode mode)")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := NewPlugin(cfg).Run(ctx); err != nil {
		return err
	}
	logger.Printf("stopped")
	return nil
}

// readEnviron parses a NUL-separated KEY=VALUE file such as /proc/<pid>/environ.
func readEnviron(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	for _, kv := range strings.Split(string(data), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			env[k] = v
		}
	}
	return env, nil
}

func checkCharDevice(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return fmt.Errorf("%s is not a character device", path)
	}
	return nil
}

func ids(devs []Device) []string {
	out := make([]string, len(devs))
	for i, d := range devs {
		out[i] = d.ID
	}
	return out
}
