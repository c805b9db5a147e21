// Package deploy holds chatgg's deployment files and their tests: the
// container image's health check (deploy/healthcheck), the shell scripts
// that provision VMs and VPS nodes (deploy/provision), the systemd unit
// (deploy/systemd) and the balancer configuration (deploy/haproxy). The
// Dockerfile, docker-compose.yml and Vagrantfile live at the repository's
// root; docs/deploy.md explains them all.
//
// The package has no code of its own. Its tests check, without a Docker
// daemon or a VM, that every setting the stack and the VMs give chatgg is
// one the binary accepts (server.Load), and that the ports, commands and
// timings agree across the files.
package deploy
