package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Endpoint is the plugin's socket, in the directory of the kubelet's socket.
const Endpoint = "vk8s-gpu.sock"

// Config is what a Plugin serves and where.
type Config struct {
	Resource      string   // extended resource name, e.g. nvidia.com/gpu
	KubeletSocket string   // the kubelet's Registration socket
	Devices       []Device // what to advertise
	CtlHostPath   string   // node mounted as /dev/nvidiactl with every allocation; "" for none
	PollInterval  time.Duration
	Logger        *log.Logger
}

// Plugin serves the DevicePlugin service and keeps it registered with the kubelet.
type Plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	cfg  Config
	byID map[string]Device
	sock string
}

// NewPlugin returns a plugin for cfg.
func NewPlugin(cfg Config) *Plugin {
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = log.New(os.Stderr, "", log.LstdFlags)
	}
	byID := make(map[string]Device, len(cfg.Devices))
	for _, d := range cfg.Devices {
		byID[d.ID] = d
	}
	return &Plugin{cfg: cfg, byID: byID, sock: filepath.Join(filepath.Dir(cfg.KubeletSocket), Endpoint)}
}

// GetDevicePluginOptions asks for neither PreStartContainer nor GetPreferredAllocation.
func (p *Plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

// ListAndWatch sends the (fixed, all healthy) device list once and holds the stream open.
func (p *Plugin) ListAndWatch(_ *pluginapi.Empty, stream grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	resp := &pluginapi.ListAndWatchResponse{Devices: make([]*pluginapi.Device, 0, len(p.cfg.Devices))}
	for _, d := range p.cfg.Devices {
		resp.Devices = append(resp.Devices, &pluginapi.Device{ID: d.ID, Health: pluginapi.Healthy})
	}
	if err := stream.Send(resp); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// Allocate answers each container request with its environment and device nodes.
func (p *Plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, creq := range req.GetContainerRequests() {
		cresp, err := containerResponse(p.byID, p.cfg.CtlHostPath, creq.GetDevicesIds())
		if err != nil {
			p.cfg.Logger.Printf("allocate %s: %v", strings.Join(creq.GetDevicesIds(), ","), err)
			return nil, err
		}
		p.cfg.Logger.Printf("allocate %s", strings.Join(creq.GetDevicesIds(), ","))
		resp.ContainerResponses = append(resp.ContainerResponses, cresp)
	}
	return resp, nil
}

// Run serves the plugin socket and registers with the kubelet until ctx ends; then it stops the
// server and removes the socket. Every PollInterval it checks that its socket still exists (a
// starting kubelet removes every socket in the directory) and that kubelet.sock is the one it
// registered with (same inode and change time); otherwise it recreates the socket and registers again.
func (p *Plugin) Run(ctx context.Context) error {
	var (
		srv       *grpc.Server
		sockID    fileID // the socket srv listens on
		kubeletID fileID // the kubelet.sock registered with; zero: not registered
		lastErr   string
	)
	stopServer := func() {
		if srv != nil {
			srv.Stop()
			srv = nil
		}
		// Remove the socket only if it is still the one srv listened on.
		if id, err := socketID(p.sock); err == nil && id == sockID {
			_ = os.Remove(p.sock)
		}
	}
	defer stopServer()

	ticker := time.NewTicker(p.cfg.PollInterval)
	defer ticker.Stop()
	for {
		if id, err := socketID(p.sock); srv == nil || err != nil || id != sockID {
			if srv != nil {
				p.cfg.Logger.Printf("socket %s is gone; serving it again", p.sock)
			}
			stopServer()
			var err error
			if srv, sockID, err = p.serve(); err != nil {
				return err
			}
			kubeletID = fileID{}
		}
		// note logs a waiting or failure message once, not on every poll.
		note := func(msg string) {
			if msg != lastErr && ctx.Err() == nil {
				p.cfg.Logger.Print(msg)
				lastErr = msg
			}
		}
		if id, err := socketID(p.cfg.KubeletSocket); err != nil {
			note(fmt.Sprintf("waiting for the kubelet: %v", err))
		} else if id != kubeletID {
			if err := p.register(ctx); err != nil {
				note(fmt.Sprintf("registering with %s: %v (will retry)", p.cfg.KubeletSocket, err))
			} else {
				kubeletID, lastErr = id, ""
				p.cfg.Logger.Printf("registered %s with the kubelet at %s: endpoint %s, %d device(s) %s",
					p.cfg.Resource, p.cfg.KubeletSocket, Endpoint, len(p.cfg.Devices), strings.Join(ids(p.cfg.Devices), ","))
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// serve listens on the plugin socket (replacing a stale one) and starts the gRPC server.
func (p *Plugin) serve() (*grpc.Server, fileID, error) {
	if err := os.Remove(p.sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fileID{}, err
	}
	if err := os.MkdirAll(filepath.Dir(p.sock), 0o755); err != nil {
		return nil, fileID{}, err
	}
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: p.sock, Net: "unix"})
	if err != nil {
		return nil, fileID{}, err
	}
	lis.SetUnlinkOnClose(false) // Run removes the socket, and only if it is still this one
	id, err := socketID(p.sock)
	if err != nil {
		lis.Close()
		return nil, fileID{}, err
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, p)
	go func() { _ = srv.Serve(lis) }()
	return srv, id, nil
}

func (p *Plugin) register(ctx context.Context) error {
	conn, err := grpc.NewClient("unix://"+p.cfg.KubeletSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     Endpoint,
		ResourceName: p.cfg.Resource,
		Options:      &pluginapi.DevicePluginOptions{},
	})
	return err
}

// fileID tells a socket from a later one at the same path. The inode alone does not: ext4 hands
// a freed inode number straight to the next file, so the change time goes in too.
type fileID struct {
	dev, ino    uint64
	ctime, nsec int64
}

func socketID(path string) (fileID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
		return fileID{}, fmt.Errorf("%s is not a socket", path)
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino, ctime: int64(st.Ctim.Sec), nsec: int64(st.Ctim.Nsec)}, nil
}
