// A cert-manager controller for tests: the issuers/certificates controllers of the
// github.com/cert-manager/cert-manager module, started the way cert-manager's own controller
// starts them (controller.NewContextFactory, controller.Known()), without leader election, ACME,
// the ingress/gateway shims or the webhook. The official cmd/controller main is a separate module
// that the Go module proxy does not serve; production clusters run the released cert-manager.
//
// hack/build-cert-manager.sh builds it; kube_ip_tracker/testing/cert_manager.py runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/klog/v2"

	"github.com/cert-manager/cert-manager/pkg/controller"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	"github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	"github.com/cert-manager/cert-manager/pkg/util"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server (empty: in-cluster)")
	namespace := flag.String("namespace", "", "only this namespace (empty: all; the clusterissuers controller needs all)")
	resourceNS := flag.String("cluster-resource-namespace", "cert-manager", "namespace of the Secrets that ClusterIssuers read")
	workers := flag.Int("workers", 2, "workers per controller")
	readyAddr := flag.String("ready-address", "127.0.0.1:0", "address of /readyz (200 once every informer cache synced)")
	minBackoff := flag.Duration("certificate-request-minimum-backoff", time.Hour, "first retry delay of a failed CertificateRequest")
	version := flag.Bool("version", false, "print the cert-manager module version and exit")
	klog.InitFlags(nil)
	flag.Parse()
	if *version {
		fmt.Println(util.AppVersion)
		return
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, klog.Background(), "cert-manager-controller")
	if err := run(ctx, *kubeconfig, *namespace, *resourceNS, *workers, *readyAddr, *minBackoff); err != nil {
		klog.ErrorS(err, "cert-manager controller failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}

func run(ctx context.Context, kubeconfig, namespace, resourceNS string, workers int, readyAddr string, minBackoff time.Duration) error {
	factory, err := controller.NewContextFactory(ctx, controller.ContextOptions{
		Kubeconfig:    kubeconfig,
		Namespace:     namespace,
		IssuerOptions: controller.IssuerOptions{ClusterResourceNamespace: resourceNS},
		CertificateOptions: controller.CertificateOptions{
			CertificateRequestMinimumBackoffDuration: minBackoff,
			CertificateRequestMaximumBackoffDuration: 32 * time.Hour,
		},
	})
	if err != nil {
		return fmt.Errorf("building the controller context: %w", err)
	}
	base, err := factory.Build()
	if err != nil {
		return fmt.Errorf("building the controller context: %w", err)
	}

	ln, err := net.Listen("tcp", readyAddr)
	if err != nil {
		return fmt.Errorf("listening on --ready-address %s: %w", readyAddr, err)
	}
	var ready atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "informer caches not synced", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(ln); err != http.ErrServerClosed {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		return srv.Close()
	})

	var names []string
	for name, construct := range controller.Known() {
		if namespace != "" && name == clusterissuers.ControllerName {
			continue
		}
		iface, err := construct(factory)
		if err != nil {
			return fmt.Errorf("constructing controller %s: %w", name, err)
		}
		names = append(names, name)
		g.Go(func() error { return iface.Run(workers, gctx) })
	}
	base.SharedInformerFactory.Start(gctx.Done())
	base.KubeSharedInformerFactory.Start(gctx.Done())
	base.HTTP01ResourceMetadataInformersFactory.Start(gctx.Done())
	g.Go(func() error {
		if !allSynced(base.SharedInformerFactory.WaitForCacheSync(gctx.Done())) ||
			!allSynced(base.KubeSharedInformerFactory.WaitForCacheSync(gctx.Done())) {
			return nil // cancelled before the caches synced
		}
		ready.Store(true)
		klog.InfoS("cert-manager controller ready", "controllers", strings.Join(names, ","), "readyz", "http://"+ln.Addr().String()+"/readyz")
		return nil
	})
	return g.Wait()
}

func allSynced[K comparable](synced map[K]bool) bool {
	for _, ok := range synced {
		if !ok {
			return false
		}
	}
	return true
}
