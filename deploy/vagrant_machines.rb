# vagrant_machines.rb evaluates the Vagrantfile without Vagrant and prints
# the machines it defines as JSON: name, hostname, private address, and each
# shell provisioner's command and environment. deploy/deploy_test.go runs
# every provisioning script with that environment (DRY_RUN) and checks what
# they would install, so the Vagrant path is tested without VirtualBox.
#
#   ruby deploy/vagrant_machines.rb [Vagrantfile]
#
# A stand-in records the calls the Vagrantfile makes; settings it does not
# know (box, provider options, synced folders) are accepted and ignored.
require "json"

# Ignored accepts any call chain: config.vm.box = ..., vb.memory = ...
class Ignored
  def method_missing(_name, *_args, **_opts)
    yield Ignored.new if block_given?
    self
  end

  def respond_to_missing?(*)
    true
  end
end

# VM records one machine's vm settings, or the global ones.
class VM < Ignored
  attr_reader :machines, :networks, :provisioners
  attr_accessor :hostname

  def initialize(machines)
    super()
    @machines = machines
    @networks = []
    @provisioners = []
  end

  def define(name, **_opts)
    node = Node.new(@machines)
    yield node
    @machines << {
      "name" => name.to_s,
      "hostname" => node.vm.hostname,
      "ips" => node.vm.networks.map { |n| n[:ip] }.compact,
      "aliases" => node.hostsupdater.aliases || [],
      "provision" => node.vm.provisioners,
    }
  end

  def network(type, **opts)
    @networks << { type: type, ip: opts[:ip] }
  end

  def provision(type, **opts)
    raise "only shell provisioners are expected, got #{type}" unless type.to_s == "shell"

    @provisioners << {
      "name" => opts[:name].to_s,
      "inline" => opts[:inline].to_s,
      "env" => (opts[:env] || {}).transform_keys(&:to_s).transform_values(&:to_s),
    }
  end
end

# HostsUpdater is the vagrant-hostsupdater plugin's setting.
class HostsUpdater
  attr_accessor :aliases
end

# Node is a machine's configuration, or the top-level one.
class Node < Ignored
  attr_reader :vm, :hostsupdater

  def initialize(machines)
    super()
    @vm = VM.new(machines)
    @hostsupdater = HostsUpdater.new
  end
end

# Vagrant is the stand-in for Vagrant's module.
module Vagrant
  def self.has_plugin?(_name)
    true # take the plugin's branch too
  end

  def self.configure(_version)
    machines = []
    yield Node.new(machines)
    puts JSON.pretty_generate(machines)
  end
end

load File.expand_path(ARGV.fetch(0, File.join(__dir__, "..", "Vagrantfile")))
