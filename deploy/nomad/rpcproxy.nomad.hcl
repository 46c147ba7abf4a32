# rpcproxy on every Nomad client node: `nomad job run deploy/nomad/rpcproxy.nomad.hcl`.
#
# A system job places one allocation on each eligible client node, so every
# service on a node asks its own proxy, over the node's loopback, which Nomad
# server to call. The proxy follows the node's own Nomad agent (nomad_addr):
# it polls that agent's HTTP API for the region's servers and leader (protocol
# section 7), so no heartbeat publisher is needed.
#
# It reaches the agent through Nomad's Task API (Nomad 1.5+): the agent's HTTP
# API on a Unix socket in the task's secrets directory, with the task's
# workload identity as its token. So the job holds no secret: no token, no TLS
# files. The identity needs an ACL policy that reads the agent and the nodes,
# attached to this job once (see the README, "Deploying across a Nomad
# cluster"):
#
#   nomad acl policy apply -namespace default -job rpcproxy rpcproxy-read policy.hcl
#
# The ports are bound to the node's loopback only. Nomad reserves them on a
# host network named "loopback", which each client declares once in its agent
# configuration (see the README, "Deploying across a Nomad cluster"):
#
#   client {
#     host_network "loopback" {
#       interface = "lo"
#     }
#   }

variable "image" {
  type        = string
  default     = "rpcproxy:local"
  description = "The rpcproxy image, as the nodes' Docker engines can pull it."
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "region" {
  type        = string
  default     = "global"
  description = "The Nomad region whose servers the proxies hand out."
}

job "rpcproxy" {
  type        = "system"
  datacenters = var.datacenters
  region      = var.region

  update {
    # One node at a time: a node's clients lose their proxy only briefly.
    max_parallel = 1
    stagger      = "10s"
  }

  group "rpcproxy" {
    network {
      mode = "host"

      port "query" {
        static       = 4650
        host_network = "loopback"
      }
      port "heartbeat" {
        static       = 4651
        host_network = "loopback"
      }
      port "events" {
        static       = 4652
        host_network = "loopback"
      }
      port "metrics" {
        static       = 4653
        host_network = "loopback"
      }
    }

    restart {
      # serve exits 1 when a part of it stops (rather than answer from a
      # frozen list): restart it, and keep trying after a bad spell.
      attempts = 3
      interval = "5m"
      delay    = "10s"
      mode     = "delay"
    }

    service {
      name     = "rpcproxy"
      provider = "nomad"
      port     = "query"

      # Liveness, not readiness: /healthz answers 200 while every part of
      # serve runs, and still does when the cluster is down (then /readyz
      # says not_ready): restarting the proxy would not bring the servers
      # back, only drop its state, so a restart loop must not follow an
      # outage. /readyz is for whoever routes clients to this proxy.
      check {
        name     = "rpcproxy alive"
        type     = "http"
        port     = "metrics"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"

        check_restart {
          limit = 3
          grace = "30s"
        }
      }
    }

    task "rpcproxy" {
      driver = "docker"

      config {
        image = var.image
        # Host networking: the proxy binds the node's loopback, where the
        # node's clients and the checks find it, and reaches the node's agent.
        network_mode = "host"
        command      = "rpcproxy"
        args         = ["serve"]
      }

      # The task's workload identity as NOMAD_TOKEN: the Task API always
      # requires a token, and this one is Nomad's to issue, not the job's.
      identity {
        env = true
      }

      env {
        # The proxy follows the node's own Nomad agent for the server list,
        # through the Task API's socket (Nomad mounts the secrets directory
        # into the container and sets NOMAD_SECRETS_DIR to it).
        RPCPROXY_NOMAD_ADDR     = "unix://${NOMAD_SECRETS_DIR}/api.sock"
        RPCPROXY_REGION         = var.region
        RPCPROXY_DATACENTER     = "${node.datacenter}"
        RPCPROXY_QUERY          = "tcp://127.0.0.1:${NOMAD_PORT_query}"
        RPCPROXY_HEARTBEAT_BIND = "tcp://127.0.0.1:${NOMAD_PORT_heartbeat}"
        RPCPROXY_EVENTS         = "tcp://127.0.0.1:${NOMAD_PORT_events}"
        RPCPROXY_METRICS        = "127.0.0.1:${NOMAD_PORT_metrics}"
      }

      resources {
        cpu    = 200 # MHz
        memory = 128 # MB
      }

      kill_timeout = "10s"
    }
  }
}
