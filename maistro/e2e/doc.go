// Package e2e holds maistro's end-to-end tests: they start the real Python adapter
// (<repo>/.venv/bin/python -m adapter) and drive it with the client and the CLI. They run only
// when MAISTRO_E2E=1:
//
//	cd maistro && MAISTRO_E2E=1 go test -v -run TestAdapter ./e2e
package e2e
