#!/usr/bin/perl
# Second, independent MIME reader for mime_check.py: Perl MIME-tools
# (MIME::Parser, MIME::Words). For each .eml given, prints one JSON object
# per line: file, subject, from/to display names and addresses (as decoded
# by this reader), content types of the leaf parts, and the decoded
# text/plain and text/html bodies.
use strict;
use warnings;
use MIME::Parser;
use MIME::Words qw(decode_mimewords);
use Encode qw(decode);
use JSON::PP;

my $json = JSON::PP->new->utf8->canonical;

sub dec_words {
	my ($raw) = @_;
	return undef unless defined $raw;
	$raw =~ s/\r?\n([ \t])/$1/g;   # unfold
	$raw =~ s/\r?\n$//;
	my $out = '';
	for my $w (decode_mimewords($raw)) {
		my ($data, $cs) = @$w;
		$out .= decode(defined $cs ? $cs : 'utf-8', $data);
	}
	$out =~ s/^\s+//;
	return $out;
}

sub mailbox {
	my ($raw) = @_;
	my $s = dec_words($raw);
	my ($name, $addr);
	if ($s =~ /^(.*?)\s*<([^<>]*)>\s*$/s) {
		($name, $addr) = ($1, $2);
	} else {
		($name, $addr) = ('', $s);
	}
	if ($name =~ /^"(.*)"$/s) {
		$name = $1;
		$name =~ s/\\(.)/$1/g;
	}
	return ($name, $addr);
}

my $parser = MIME::Parser->new;
$parser->output_to_core(1);
$parser->decode_headers(0);
for my $file (@ARGV) {
	my $ent = $parser->parse_open($file) or die "$file: cannot parse";
	my $head = $ent->head;
	my ($fn, $fa) = mailbox($head->get('From'));
	my ($tn, $ta) = mailbox($head->get('To'));
	my %r = (file => $file, subject => dec_words($head->get('Subject')),
		from_name => $fn, from_addr => $fa,
		to_name => $tn, to_addr => $ta, types => [],
		headers => [ map { lc } $head->tags ]);
	my @leaves = $ent->parts ? $ent->parts : ($ent);
	$r{top} = $ent->mime_type;
	for my $p (@leaves) {
		my $t = $p->mime_type;
		push @{$r{types}}, $t;
		my $body = $p->bodyhandle ? $p->bodyhandle->as_string : '';
		$body = decode('utf-8', $body);
		$r{text} = $body if $t eq 'text/plain';
		$r{html} = $body if $t eq 'text/html';
	}
	print $json->encode(\%r), "\n";
}
