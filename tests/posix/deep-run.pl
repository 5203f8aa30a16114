#!/usr/bin/perl
# deep-run.pl ROOT LEN TARGET COMMAND...: runs COMMAND in a directory LEN bytes below ROOT, reached through a bind
# mount on TARGET. Run it under `unshare --mount --propagation private` (a private mount namespace, gone with its
# last process, so the bind never outlives the run).
#
# It walks down from ROOT to deep/er/sub/nnn..., LEN bytes below it (names of at most 255 bytes), one relative chdir
# at a time (no absolute path can name a directory that deep), making each directory, binds that directory onto
# TARGET and runs COMMAND. pjdfstest makes its paths absolute (4,095 bytes at most): through the bind, each one is
# LEN bytes longer on the netdisk server, as a program's relative paths are when it runs in that directory.
use strict;
use warnings;

my ($root, $len, $target, @cmd) = @ARGV;
@cmd or die "usage: deep-run.pl ROOT LEN TARGET COMMAND...\n";
chdir($root) or die "chdir $root: $!\n";
my @names = ("deep", "er", "sub");
my $have = length("/deep/er/sub");
while ($have < $len) {
    my $n = $len - $have - 1;
    $n = 255 if $n > 255;
    $n > 0 or die "no name fits the last byte of $len\n";
    push @names, "n" x $n;
    $have += 1 + $n;
}
for my $name (@names) {
    mkdir($name, 0755) or $!{EEXIST} or die "mkdir: $!\n";
    chdir($name) or die "chdir: $!\n";
}
system("mount", "--no-canonicalize", "--bind", ".", $target) == 0 or die "mount --bind . $target failed\n";
chdir("/") or die "chdir /: $!\n";
exec(@cmd) or die "exec $cmd[0]: $!\n";
