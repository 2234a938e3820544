package main

import (
	"bytes"
	"context"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// fakeKubelet serves the kubelet's Registration service on a socket and records the requests.
type fakeKubelet struct {
	pluginapi.UnimplementedRegistrationServer
	srv  *grpc.Server
	reqs chan *pluginapi.RegisterRequest
}

func startFakeKubelet(t *testing.T, sock string) *fakeKubelet {
	t.Helper()
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	k := &fakeKubelet{srv: grpc.NewServer(), reqs: make(chan *pluginapi.RegisterRequest, 10)}
	pluginapi.RegisterRegistrationServer(k.srv, k)
	go func() { _ = k.srv.Serve(lis) }()
	t.Cleanup(k.srv.Stop)
	return k
}

func (k *fakeKubelet) Register(_ context.Context, req *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	k.reqs <- req
	return &pluginapi.Empty{}, nil
}

func (k *fakeKubelet) awaitRegister(t *testing.T) *pluginapi.RegisterRequest {
	t.Helper()
	select {
	case req := <-k.reqs:
		return req
	case <-time.After(10 * time.Second):
		t.Fatal("the plugin did not register")
		return nil
	}
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestPluginWithFakeKubelet(t *testing.T) {
	dir := t.TempDir() // stands in for /var/lib/kubelet/device-plugins
	kubeletSock := filepath.Join(dir, "kubelet.sock")
	pluginSock := filepath.Join(dir, Endpoint)
	kubelet := startFakeKubelet(t, kubeletSock)

	devDir := filepath.Join(t.TempDir(), "gpus") // no nodes needed: Allocate only names them
	devs, err := HostDevices("GPU-test-", 4, devDir)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	plugin := NewPlugin(Config{
		Resource:      "nvidia.com/gpu",
		KubeletSocket: kubeletSock,
		Devices:       devs,
		CtlHostPath:   CtlHostPath(devDir),
		PollInterval:  50 * time.Millisecond,
		Logger:        log.New(&logs, "", 0),
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- plugin.Run(ctx) }()

	req := kubelet.awaitRegister(t)
	if req.Version != pluginapi.Version || req.Endpoint != Endpoint || req.ResourceName != "nvidia.com/gpu" {
		t.Errorf("Register(%v), want version %s, endpoint %s, resource nvidia.com/gpu", req, pluginapi.Version, Endpoint)
	}
	if o := req.GetOptions(); o.GetPreStartRequired() || o.GetGetPreferredAllocationAvailable() {
		t.Errorf("Register options %v, want neither pre-start nor preferred allocation", o)
	}

	client := dialPlugin(t, pluginSock)
	opts, err := client.GetDevicePluginOptions(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if opts.PreStartRequired || opts.GetPreferredAllocationAvailable {
		t.Errorf("GetDevicePluginOptions = %v", opts)
	}
	if got, want := listDevices(t, ctx, client), []string{"GPU-test-0 Healthy", "GPU-test-1 Healthy", "GPU-test-2 Healthy", "GPU-test-3 Healthy"}; !reflect.DeepEqual(got, want) {
		t.Errorf("ListAndWatch = %q, want %q", got, want)
	}

	resp, err := client.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
		{DevicesIds: []string{"GPU-test-2", "GPU-test-1"}},
		{DevicesIds: []string{"GPU-test-3"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.ContainerResponses) != 2 {
		t.Fatalf("Allocate returned %d container responses, want 2", len(resp.ContainerResponses))
	}
	first, second := resp.ContainerResponses[0], resp.ContainerResponses[1]
	if want := map[string]string{
		"NVIDIA_VISIBLE_DEVICES": "GPU-test-2,GPU-test-1",
		"VK8S_GPU_DEVICE_MAP":    "GPU-test-2=/dev/nvidia2,GPU-test-1=/dev/nvidia1",
	}; !reflect.DeepEqual(first.Envs, want) {
		t.Errorf("first container Envs = %v, want %v", first.Envs, want)
	}
	if got, want := specStrings(first.Devices), []string{
		devDir + "/nvidia2 -> /dev/nvidia2 rw",
		devDir + "/nvidia1 -> /dev/nvidia1 rw",
		devDir + "/nvidiactl -> /dev/nvidiactl rw",
	}; !reflect.DeepEqual(got, want) {
		t.Errorf("first container Devices = %q, want %q", got, want)
	}
	if second.Envs["NVIDIA_VISIBLE_DEVICES"] != "GPU-test-3" || len(second.Devices) != 2 {
		t.Errorf("second container: %v", second)
	}

	_, err = client.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
		{DevicesIds: []string{"GPU-test-9"}},
	}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "GPU-test-9") {
		t.Errorf("Allocate of an unknown id: err = %v, want InvalidArgument naming it", err)
	}

	// A kubelet restart: it wipes the directory (our socket too) and serves a new kubelet.sock.
	kubelet.srv.Stop()
	for _, p := range []string{kubeletSock, pluginSock} {
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	kubelet2 := startFakeKubelet(t, kubeletSock)
	if req := kubelet2.awaitRegister(t); req.Endpoint != Endpoint || req.ResourceName != "nvidia.com/gpu" {
		t.Errorf("re-Register(%v)", req)
	}
	if got := listDevices(t, ctx, dialPlugin(t, pluginSock)); len(got) != 4 {
		t.Errorf("ListAndWatch after the restart = %q, want 4 devices", got)
	}

	// A restart that leaves our socket alone only needs a new registration.
	kubelet2.srv.Stop()
	_ = os.Remove(kubeletSock)
	kubelet3 := startFakeKubelet(t, kubeletSock)
	kubelet3.awaitRegister(t)
	// The plugin logs once the Register call has returned: wait for the third line.
	for deadline := time.Now().Add(10 * time.Second); strings.Count(logs.String(), "registered nvidia.com/gpu") < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("no third registration logged:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, err := os.Stat(pluginSock); !os.IsNotExist(err) {
		t.Errorf("plugin socket still there after stop: %v", err)
	}
	out := logs.String()
	if n := strings.Count(out, "registered nvidia.com/gpu"); n != 3 {
		t.Errorf("logged %d registrations, want 3:\n%s", n, out)
	}
	if !strings.Contains(out, "allocate GPU-test-2,GPU-test-1\n") || !strings.Contains(out, "allocate GPU-test-9: ") {
		t.Errorf("Allocate calls not logged:\n%s", out)
	}
}

// TestPluginWaitsForKubelet: no kubelet.sock at first, and an empty vNode (zero devices).
func TestPluginWaitsForKubelet(t *testing.T) {
	dir := t.TempDir()
	kubeletSock := filepath.Join(dir, "kubelet.sock")
	devs, err := ParseVNodeEnv("", "")
	if err != nil {
		t.Fatal(err)
	}
	plugin := NewPlugin(Config{Resource: "nvidia.com/gpu", KubeletSocket: kubeletSock, Devices: devs,
		PollInterval: 50 * time.Millisecond, Logger: log.New(io.Discard, "", 0)})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- plugin.Run(ctx) }()

	time.Sleep(200 * time.Millisecond)
	kubelet := startFakeKubelet(t, kubeletSock)
	kubelet.awaitRegister(t)
	if got := listDevices(t, ctx, dialPlugin(t, filepath.Join(dir, Endpoint))); len(got) != 0 {
		t.Errorf("ListAndWatch = %q, want no devices", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
}

func dialPlugin(t *testing.T, sock string) pluginapi.DevicePluginClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pluginapi.NewDevicePluginClient(conn)
}

func listDevices(t *testing.T, ctx context.Context, client pluginapi.DevicePluginClient) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stream, err := client.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got := []string{}
	for _, d := range resp.Devices {
		got = append(got, d.ID+" "+d.Health)
	}
	return got
}
