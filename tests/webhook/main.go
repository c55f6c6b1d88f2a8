// Command webhook is a validating admission webhook for hepto's tests: it refuses
// every object whose name starts with "forbidden-", allows the others, and logs
// each review. It serves HTTPS on port 8443 with /tls/tls.crt and /tls/tls.key.
//
// "webhook ask URL" is a client instead: a GET of URL as the pod's service
// account (its token, and the cluster CA to verify the server), body to stdout.
// busybox's wget cannot do it: its TLS shares no cipher suite with Go's servers.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
)

const serviceAccount = "/var/run/secrets/kubernetes.io/serviceaccount/"

func ask(url string) error {
	token, err := os.ReadFile(serviceAccount + "token")
	if err != nil {
		return err
	}
	authority, err := os.ReadFile(serviceAccount + "ca.crt")
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(authority) {
		return fmt.Errorf("no certificate in %sca.crt", serviceAccount)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	request, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	request.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	response, err := client.Do(request)
	if err != nil {
		return err
	}
	defer response.Body.Close()
	if _, err := io.Copy(os.Stdout, response.Body); err != nil {
		return err
	}
	if response.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, response.Status)
	}
	return nil
}

type status struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

type response struct {
	UID     string  `json:"uid"`
	Allowed bool    `json:"allowed"`
	Status  *status `json:"status,omitempty"`
}

type request struct {
	UID  string `json:"uid"`
	Name string `json:"name"`
}

type review struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Request    *request  `json:"request,omitempty"`
	Response   *response `json:"response,omitempty"`
}

func validate(w http.ResponseWriter, r *http.Request) {
	var in review
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Request == nil {
		http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
		return
	}
	answer := &response{UID: in.Request.UID, Allowed: true}
	if strings.HasPrefix(in.Request.Name, "forbidden-") {
		answer.Allowed = false
		answer.Status = &status{Code: http.StatusForbidden, Message: "the test webhook refuses " + in.Request.Name}
	}
	log.Printf("reviewed %s from %s: allowed %v", in.Request.Name, r.RemoteAddr, answer.Allowed)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(review{APIVersion: in.APIVersion, Kind: in.Kind, Response: answer})
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "ask" {
		if err := ask(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "webhook ask:", err)
			os.Exit(1)
		}
		return
	}
	http.HandleFunc("/validate", validate)
	log.Fatal(http.ListenAndServeTLS("[::]:8443", "/tls/tls.crt", "/tls/tls.key", nil))
}
