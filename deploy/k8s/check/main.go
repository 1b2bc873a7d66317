// Command check validates deploy/k8s offline, the way a cluster would read
// it: it builds the kustomization as `kubectl apply -k` does, decodes every
// object strictly into its Kubernetes type (an unknown or misspelled field,
// a wrong type or a duplicate key fails), and checks what Confab relies on:
// probes on /readyz and /healthz, a preStop pause, resources, selectors that
// match their pods, and the autoscaler, budget and ingress aimed at the nodes.
//
//	go run ./deploy/k8s/check deploy/k8s
package main

import (
	"fmt"
	"os"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

var problems []string

func fail(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: check DIR (a kustomization directory)")
		os.Exit(2)
	}
	built, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "kustomize build: %v\n", err)
		os.Exit(1)
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		appsv1.AddToScheme, corev1.AddToScheme, policyv1.AddToScheme, autoscalingv2.AddToScheme, networkingv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	decoder := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()

	deployments := map[string]*appsv1.Deployment{}
	services := map[string]*corev1.Service{}
	var budgets []*policyv1.PodDisruptionBudget
	var scalers []*autoscalingv2.HorizontalPodAutoscaler
	var ingresses []*networkingv1.Ingress
	kinds := map[string]int{}
	for _, res := range built.Resources() {
		text, err := res.AsYAML()
		if err != nil {
			fail("%s: %v", res.CurId(), err)
			continue
		}
		obj, gvk, err := decoder.Decode(text, nil, nil)
		if err != nil {
			fail("%s: %v", res.CurId(), err)
			continue
		}
		kinds[gvk.Kind]++
		switch o := obj.(type) {
		case *appsv1.Deployment:
			deployments[o.Name] = o
		case *corev1.Service:
			services[o.Name] = o
		case *policyv1.PodDisruptionBudget:
			budgets = append(budgets, o)
		case *autoscalingv2.HorizontalPodAutoscaler:
			scalers = append(scalers, o)
		case *networkingv1.Ingress:
			ingresses = append(ingresses, o)
		}
	}
	for _, kind := range []string{"Namespace", "Secret", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Ingress"} {
		if kinds[kind] == 0 {
			fail("no %s", kind)
		}
	}

	node, worker := deployments["confab-node"], deployments["confab-worker"]
	if node == nil || worker == nil {
		fail("expected the Deployments confab-node and confab-worker")
	} else {
		checkDeployment(node, "/readyz", "/healthz", true)
		checkDeployment(worker, "/healthz", "/healthz", false)
	}
	if svc := services["confab-node"]; svc == nil {
		fail("no Service confab-node")
	} else if node != nil && !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(node.Spec.Template.Labels)) {
		fail("Service confab-node does not select the node pods")
	}
	for _, pdb := range budgets {
		if node != nil && (pdb.Spec.Selector == nil || !labels.SelectorFromSet(pdb.Spec.Selector.MatchLabels).Matches(labels.Set(node.Spec.Template.Labels))) {
			fail("PodDisruptionBudget %s does not select the node pods", pdb.Name)
		}
	}
	for _, hpa := range scalers {
		if hpa.Spec.ScaleTargetRef.Kind != "Deployment" || hpa.Spec.ScaleTargetRef.Name != "confab-node" {
			fail("HorizontalPodAutoscaler %s does not scale confab-node", hpa.Name)
		}
		if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < 2 || hpa.Spec.MaxReplicas < *hpa.Spec.MinReplicas {
			fail("HorizontalPodAutoscaler %s: at least 2 replicas, max above min", hpa.Name)
		}
	}
	for _, ing := range ingresses {
		for _, rule := range ing.Spec.Rules {
			for _, path := range rule.HTTP.Paths {
				if path.Backend.Service == nil || services[path.Backend.Service.Name] == nil {
					fail("Ingress %s routes to a Service that is not deployed", ing.Name)
				}
			}
		}
		for _, key := range []string{"nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"} {
			if ing.Annotations[key] == "" {
				fail("Ingress %s: %s is needed for long-lived WebSockets", ing.Name, key)
			}
		}
	}

	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(os.Stderr, "deploy/k8s:", p)
		}
		os.Exit(1)
	}
	fmt.Printf("deploy/k8s: %d objects, all valid\n", len(built.Resources()))
}

func checkDeployment(d *appsv1.Deployment, ready, live string, drains bool) {
	if d.Spec.Selector == nil || !labels.SelectorFromSet(d.Spec.Selector.MatchLabels).Matches(labels.Set(d.Spec.Template.Labels)) {
		fail("%s: the selector does not match the pod labels", d.Name)
	}
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != ready {
			fail("%s/%s: readiness probe must GET %s", d.Name, c.Name, ready)
		}
		if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != live {
			fail("%s/%s: liveness probe must GET %s", d.Name, c.Name, live)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			fail("%s/%s: CPU and memory requests and a memory limit are needed", d.Name, c.Name)
		}
		if drains && (c.Lifecycle == nil || c.Lifecycle.PreStop == nil) {
			fail("%s/%s: a preStop pause is needed so the pod leaves the endpoints before SIGTERM", d.Name, c.Name)
		}
	}
}
